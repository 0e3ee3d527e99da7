use super::*;
use crate::tools::{parse, Parsed};

/// A call as the grammar makes the model write it.
fn call(name: &str, args: &str) -> String {
    format!("<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {args}}}\n</tool_call>")
}

/// Reads `text` in the given pieces, checking what every stream must keep: a call's name
/// comes before its arguments, indexes count up from 0, ids are OpenAI's shape.
fn read(chunks: &[&str]) -> Parsed {
    let mut p = CallParser::default();
    let mut pieces = Vec::new();
    for c in chunks {
        pieces.extend(p.push(c));
    }
    pieces.extend(p.finish());
    let mut started = 0;
    for piece in &pieces {
        match piece {
            Piece::Call { index, id, .. } => {
                assert_eq!(*index, started, "{pieces:?}");
                assert!(id.starts_with("call_") && id.len() == 29, "{id}");
                assert!(id[5..].bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
                started += 1;
            }
            Piece::Arguments { index, fragment } => {
                assert_eq!(*index + 1, started, "{pieces:?}");
                assert!(!fragment.is_empty());
            }
            Piece::Content(c) => assert!(!c.is_empty()),
        }
    }
    assert_eq!(p.called(), started > 0);
    Parsed::of(pieces)
}

/// Content and (name, arguments) of each call, ids left out.
type Shape = (String, Vec<(String, String)>);

fn shape(p: &Parsed) -> Shape {
    let calls = p
        .calls
        .iter()
        .map(|c| (c.name.clone(), c.arguments.clone()))
        .collect();
    (p.content.clone(), calls)
}

fn calls(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .collect()
}

/// Outputs of every kind: text, calls, text then calls, cut calls, calls that break the
/// format, and JSON that would fool a scanner counting braces.
fn cases() -> Vec<(String, Shape)> {
    let paris = r#"{"city": "Paris", "days": 2}"#;
    let tricky = r#"{"q": "a}\"b{ </tool_call>", "n": [1, {"x": [2]}], "e": "\\"}"#;
    vec![
        (
            "Hello, wörld 🍮 <tools> are <b>fine</b>".into(),
            ("Hello, wörld 🍮 <tools> are <b>fine</b>".into(), vec![]),
        ),
        (
            "  \n Leading space goes".into(),
            ("Leading space goes".into(), vec![]),
        ),
        (
            call("get_weather", paris),
            (String::new(), calls(&[("get_weather", paris)])),
        ),
        (
            format!("{}\n{}", call("get_weather", paris), call("now", "{}")),
            (
                String::new(),
                calls(&[("get_weather", paris), ("now", "{}")]),
            ),
        ),
        (
            format!("Let me check.\n{}", call("get_weather", paris)),
            ("Let me check.\n".into(), calls(&[("get_weather", paris)])),
        ),
        (
            call("search", tricky),
            (String::new(), calls(&[("search", tricky)])),
        ),
        // Cut before the name is closed: text. Cut in the arguments: the call keeps them.
        (
            "<tool_call>\n{\"name\": \"get_wea".into(),
            ("<tool_call>\n{\"name\": \"get_wea".into(), vec![]),
        ),
        (
            "<tool_call>\n{\"name\": \"f\", \"argu".into(),
            (String::new(), calls(&[("f", "")])),
        ),
        (
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, ".into(),
            (String::new(), calls(&[("f", "{\"a\": [1, ")])),
        ),
        ("Almost <tool_ca".into(), ("Almost <tool_ca".into(), vec![])),
        // Not a call after all.
        (
            "<tool_call>hello</tool_call>".into(),
            ("<tool_call>hello</tool_call>".into(), vec![]),
        ),
        // Loose whitespace between tokens, text after a call.
        (
            "<tool_call>{ \"name\" :\"f\" ,\"arguments\":{\"a\":1} }</tool_call>\n\nDone.".into(),
            ("Done.".into(), calls(&[("f", "{\"a\":1}")])),
        ),
    ]
}

#[test]
fn whole_outputs_read_as_expected() {
    for (text, want) in cases() {
        assert_eq!(shape(&read(&[&text])), want, "{text:?}");
        assert_eq!(shape(&parse(&text)), want, "{text:?}");
    }
}

#[test]
fn any_split_reads_the_same() {
    for (text, want) in cases() {
        let bounds: Vec<usize> = (0..=text.len())
            .filter(|&k| text.is_char_boundary(k))
            .collect();
        for &k in &bounds {
            let got = read(&[&text[..k], &text[k..]]);
            assert_eq!(shape(&got), want, "{text:?} split at {k}");
        }
        // One character at a time.
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let chunks: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(shape(&read(&chunks)), want, "{text:?} char by char");
    }
}

#[test]
fn the_name_is_sent_as_soon_as_it_is_closed() {
    let mut p = CallParser::default();
    assert_eq!(p.push("<tool_call>\n{\"name\": \"get_weath"), vec![]);
    let pieces = p.push("er\"");
    assert!(
        matches!(&pieces[..], [Piece::Call { index: 0, name, .. }] if name == "get_weather"),
        "{pieces:?}"
    );
    assert_eq!(p.push(", \"arguments\": "), vec![]);
    assert_eq!(
        p.push("{\"city\""),
        vec![Piece::Arguments {
            index: 0,
            fragment: "{\"city\"".into()
        }]
    );
    assert_eq!(
        p.push(": \"Paris\"}}\n</tool_"),
        vec![Piece::Arguments {
            index: 0,
            fragment: ": \"Paris\"}".into()
        }]
    );
    assert_eq!(p.push("call>"), vec![]);
    assert_eq!(p.finish(), vec![]);
}

#[test]
fn only_a_possible_tag_is_held_back() {
    let mut p = CallParser::default();
    assert_eq!(p.push("Hi <tool"), vec![Piece::Content("Hi ".into())]);
    assert_eq!(p.push("box>"), vec![Piece::Content("<toolbox>".into())]);
    assert_eq!(p.push(" <"), vec![Piece::Content(" ".into())]);
    assert_eq!(p.finish(), vec![Piece::Content("<".into())]);
    assert!(!p.called());
}

#[test]
fn ids_differ() {
    let a = parse(&call("f", "{}"));
    let b = parse(&call("f", "{}"));
    assert_ne!(a.calls[0].id, b.calls[0].id);
}
