//! The engine through its only door, `EngineHandle`: continuous batching across adapters,
//! chunked prefill, cancellation, backpressure, cold adapter loads, replacement under load.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use loraplex_adapters::CacheConfig;
use loraplex_runtime::{
    EngineConfig, EngineHandle, FinishReason, GenerationParams, GenerationRequest, Priority,
    RuntimeError, SchedulerConfig, TokenEvent, TokenStream, Usage,
};

use crate::util::{golden, golden_json, ids, tiny_arc, tiny_registry};

fn engine(cfg: EngineConfig) -> EngineHandle {
    loraplex_runtime::start(tiny_arc(), tiny_registry(), cfg).unwrap()
}

fn greedy(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

fn request(prompt: Vec<u32>, adapter: &str, max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        adapter: (adapter != "base").then(|| adapter.to_string()),
        ..GenerationRequest::new(prompt, greedy(max_tokens))
    }
}

/// Drains a stream: (token ids, final event). Panics if events follow the final one.
fn collect(mut s: TokenStream) -> (Vec<u32>, Result<(FinishReason, Usage), RuntimeError>) {
    let mut toks = Vec::new();
    let fin = loop {
        match s
            .blocking_next()
            .expect("a final event before the stream closes")
        {
            TokenEvent::Token { id, .. } => toks.push(id),
            TokenEvent::PromptLogprobs(_) => {}
            TokenEvent::Finished { reason, usage, .. } => break Ok((reason, usage)),
            TokenEvent::Failed(e) => break Err(e),
        }
    };
    assert!(s.blocking_next().is_none(), "exactly one final event");
    (toks, fin)
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn concurrent_requests_over_mixed_adapters_match_the_golden_outputs() {
    let cases = golden_json("tiny_cases.json");
    let names = [
        "base",
        "a-r8-qv",
        "b-r16-all",
        "c-r4-rslora",
        "a-r8-qv",
        "base",
    ];
    // A small step budget forces chunked prefill of the 251-token prompt while others decode.
    let cfg = EngineConfig {
        scheduler: SchedulerConfig {
            max_running: 8,
            max_step_tokens: 48,
            max_waiting: 64,
            ..Default::default()
        },
        ..Default::default()
    };
    let h = engine(cfg);
    let streams: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            h.submit(request(ids(&cases["cases"][i]["input_ids"]), n, 16))
                .unwrap()
        })
        .collect();
    for (i, s) in streams.into_iter().enumerate() {
        let (toks, fin) = collect(s);
        assert_eq!(
            toks,
            ids(&cases["cases"][i]["results"][names[i]]["greedy_ids"]),
            "prompt {i} ({})",
            names[i]
        );
        let (reason, usage) = fin.unwrap();
        assert_eq!(reason, FinishReason::Length);
        assert_eq!(usage.completion_tokens, 16);
        assert_eq!(
            usage.prompt_tokens,
            cases["cases"][i]["input_ids"].as_array().unwrap().len()
        );
    }
    wait_until("idle", || {
        h.stats().running.load(std::sync::atomic::Ordering::Relaxed) == 0
    });
    h.shutdown();
}

#[test]
fn dropping_the_stream_cancels_and_frees_the_sequence() {
    let h = engine(EngineConfig::default());
    let prompt = ids(&golden_json("tiny_cases.json")["cases"][1]["input_ids"]);
    let mut s = h.submit(request(prompt.clone(), "base", 400)).unwrap();
    assert!(matches!(s.blocking_next(), Some(TokenEvent::Token { .. })));
    drop(s);
    wait_until("cancellation", || {
        h.stats().running.load(std::sync::atomic::Ordering::Relaxed) == 0
            && h.stats().waiting.load(std::sync::atomic::Ordering::Relaxed) == 0
    });
    let (toks, fin) = collect(h.submit(request(prompt, "base", 4)).unwrap());
    assert_eq!(toks.len(), 4);
    assert!(fin.is_ok());
    h.shutdown();
}

#[test]
fn a_full_queue_is_refused_as_overloaded() {
    let cfg = EngineConfig {
        scheduler: SchedulerConfig {
            max_running: 1,
            max_step_tokens: 64,
            max_waiting: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let h = engine(cfg);
    let prompt = ids(&golden_json("tiny_cases.json")["cases"][1]["input_ids"]);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        match h.submit(request(prompt.clone(), "base", 50)) {
            Ok(s) => accepted.push(s),
            Err(RuntimeError::Overloaded) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused >= 7, "refused {refused}");
    for s in accepted {
        assert!(collect(s).1.is_ok(), "accepted requests complete");
    }
    h.shutdown();
}

#[test]
fn shadow_work_neither_takes_queue_places_nor_delays_interactive_tokens() {
    let cfg = EngineConfig {
        scheduler: SchedulerConfig {
            max_running: 4,
            max_step_tokens: 64,
            max_waiting: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let h = engine(cfg);
    let prompt = ids(&golden_json("tiny_cases.json")["cases"][1]["input_ids"]);
    let shadow = |adapter: &str| {
        let mut r = request(prompt.clone(), adapter, 0);
        r.prompt_logprobs = Some(1);
        r.priority = Priority::Shadow;
        r
    };
    // As many shadow jobs as the interactive queue has places: the places stay free for
    // interactive requests.
    let shadows: Vec<TokenStream> = (0..2).map(|_| h.submit(shadow("base")).unwrap()).collect();
    assert_eq!(h.stats().waiting.load(Ordering::SeqCst), 0);
    let primary: Vec<TokenStream> = (0..2)
        .map(|_| h.submit(request(prompt.clone(), "base", 4)).unwrap())
        .collect();
    for s in primary {
        let (toks, fin) = collect(s);
        assert_eq!(toks.len(), 4);
        assert!(fin.is_ok());
    }
    for mut s in shadows {
        assert!(
            matches!(s.blocking_next(), Some(TokenEvent::PromptLogprobs(v)) if v.len() == prompt.len() - 1)
        );
        assert!(matches!(
            s.blocking_next(),
            Some(TokenEvent::Finished { .. })
        ));
    }
    assert_eq!(h.stats().waiting.load(Ordering::SeqCst), 0);
    h.shutdown();
}

#[test]
fn unknown_adapters_and_oversized_prompts_are_refused_at_submit() {
    let h = engine(EngineConfig::default());
    assert!(
        matches!(h.submit(request(vec![1, 2], "nope", 4)), Err(RuntimeError::UnknownAdapter(n)) if n == "nope")
    );
    assert!(matches!(
        h.submit(request(vec![1; 500], "base", 100)),
        Err(RuntimeError::ContextOverflow { .. })
    ));
    assert!(matches!(
        h.submit(request(vec![], "base", 4)),
        Err(RuntimeError::EmptyPrompt)
    ));
    h.shutdown();
}

#[test]
fn one_resident_slot_serves_many_adapters_by_eviction() {
    let cases = golden_json("tiny_cases.json");
    let cfg = EngineConfig {
        cache: CacheConfig {
            max_loras: 1,
            max_bytes: 1 << 30,
            max_cpu_loras: 1,
        },
        ..Default::default()
    };
    let h = engine(cfg);
    let names = [
        "a-r8-qv",
        "b-r16-all",
        "c-r4-rslora",
        "a-r8-qv",
        "b-r16-all",
    ];
    let streams: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            h.submit(request(ids(&cases["cases"][i]["input_ids"]), n, 16))
                .unwrap()
        })
        .collect();
    for (i, s) in streams.into_iter().enumerate() {
        let (toks, fin) = collect(s);
        assert!(fin.is_ok());
        assert_eq!(
            toks,
            ids(&cases["cases"][i]["results"][names[i]]["greedy_ids"]),
            "{}",
            names[i]
        );
    }
    let st = h.stats();
    assert!(
        st.adapter_evictions
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    assert!(
        st.resident_adapters
            .load(std::sync::atomic::Ordering::Relaxed)
            <= 1
    );
    h.shutdown();
}

#[test]
fn a_broken_adapter_fails_its_requests_and_the_engine_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("adapter_config.json"),
        r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "use_dora": true}"#,
    )
    .unwrap();
    std::fs::write(broken.join("adapter_model.safetensors"), b"garbage").unwrap();
    let h = engine(EngineConfig::default());
    h.registry().register("broken", broken);
    let (_, fin) = collect(h.submit(request(vec![1, 2, 3], "broken", 4)).unwrap());
    assert!(
        matches!(fin, Err(RuntimeError::AdapterLoad { ref name, .. }) if name == "broken"),
        "{fin:?}"
    );
    let case = &golden_json("tiny_cases.json")["cases"][2];
    let (toks, fin) = collect(
        h.submit(request(ids(&case["input_ids"]), "a-r8-qv", 16))
            .unwrap(),
    );
    assert!(fin.is_ok());
    assert_eq!(toks, ids(&case["results"]["a-r8-qv"]["greedy_ids"]));
    h.shutdown();
}

#[test]
fn replacing_an_adapter_keeps_running_sequences_on_their_version() {
    let cases = golden_json("tiny_cases.json");
    let h = engine(EngineConfig::default());
    let reg = h.registry();
    reg.register("prod", golden().join("tiny-adapters/a-r8-qv"));
    let p = ids(&cases["cases"][3]["input_ids"]);
    let mut old = h.submit(request(p.clone(), "prod", 16)).unwrap();
    let first = match old.blocking_next() {
        Some(TokenEvent::Token { id, .. }) => id,
        other => panic!("{other:?}"),
    };
    reg.register("prod", golden().join("tiny-adapters/b-r16-all"));
    let new = h.submit(request(p, "prod", 16)).unwrap();
    let (rest, fin) = collect(old);
    assert!(fin.is_ok());
    let old_toks: Vec<u32> = std::iter::once(first).chain(rest).collect();
    assert_eq!(
        old_toks,
        ids(&cases["cases"][3]["results"]["a-r8-qv"]["greedy_ids"])
    );
    let (new_toks, fin) = collect(new);
    assert!(fin.is_ok());
    assert_eq!(
        new_toks,
        ids(&cases["cases"][3]["results"]["b-r16-all"]["greedy_ids"])
    );
    h.shutdown();
}

#[test]
fn prompt_logprobs_equal_teacher_forced_scoring() {
    let lm = tiny_arc();
    let h = loraplex_runtime::start(
        lm.clone(),
        tiny_registry(),
        EngineConfig {
            scheduler: SchedulerConfig {
                max_running: 4,
                max_step_tokens: 20,
                max_waiting: 8,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let prompt = ids(&golden_json("tiny_cases.json")["cases"][5]["input_ids"]);
    let mut req = request(prompt.clone(), "base", 0);
    req.prompt_logprobs = Some(3);
    let mut s = h.submit(req).unwrap();
    let lps = match s.blocking_next() {
        Some(TokenEvent::PromptLogprobs(v)) => v,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        s.blocking_next(),
        Some(TokenEvent::Finished {
            usage: Usage {
                completion_tokens: 0,
                ..
            },
            ..
        })
    ));
    let scored = loraplex_runtime::score(&lm.model, None, &prompt, 1, 3).unwrap();
    assert_eq!(lps.len(), prompt.len() - 1);
    for (a, b) in lps.iter().zip(&scored) {
        assert_eq!(a.id, b.logprob.id);
        assert!((a.logprob - b.logprob.logprob).abs() < 1e-4);
        assert_eq!(
            a.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            b.logprob.top.iter().map(|t| t.0).collect::<Vec<_>>()
        );
    }
    h.shutdown();
}

/// A well-formed config over a weights file that is not safetensors.
fn corrupt_weights(dir: &std::path::Path) -> std::path::PathBuf {
    let d = dir.join("broken");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("adapter_config.json"),
        r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}"#,
    )
    .unwrap();
    std::fs::write(d.join("adapter_model.safetensors"), b"garbage").unwrap();
    d
}

/// Polls `cond` for up to 10 s: the engine updates its gauges after a step.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn the_waiting_count_returns_to_zero_however_requests_leave() {
    let dir = tempfile::tempdir().unwrap();
    let broken = corrupt_weights(dir.path());
    let h = engine(EngineConfig {
        scheduler: SchedulerConfig {
            max_running: 1,
            max_step_tokens: 64,
            max_waiting: 16,
            ..Default::default()
        },
        ..Default::default()
    });
    h.registry().register("broken", broken);
    let waiting = || h.stats().waiting.load(std::sync::atomic::Ordering::SeqCst);
    // One runs, others wait behind it: some are cancelled while waiting, one fails its load.
    let running = h.submit(request(vec![1, 2, 3], "base", 32)).unwrap();
    let cancelled: Vec<TokenStream> = (0..4)
        .map(|_| h.submit(request(vec![4, 5], "a-r8-qv", 4)).unwrap())
        .collect();
    let failing = h.submit(request(vec![1, 2], "broken", 4)).unwrap();
    let finishing = h.submit(request(vec![6, 7], "base", 2)).unwrap();
    assert!(waiting() >= 1);
    drop(cancelled);
    assert!(collect(failing).1.is_err());
    assert!(collect(running).1.is_ok());
    assert!(collect(finishing).1.is_ok());
    assert!(eventually(|| waiting() == 0), "waiting = {}", waiting());
    // A refused submit leaves no count behind either.
    assert!(h.submit(request(vec![], "base", 2)).is_err());
    assert_eq!(waiting(), 0);
    h.shutdown();
}

#[test]
fn a_failed_load_reports_the_adapter_error_itself() {
    let dir = tempfile::tempdir().unwrap();
    let broken = corrupt_weights(dir.path());
    let h = engine(EngineConfig::default());
    h.registry().register("broken", broken);
    let (_, fin) = collect(h.submit(request(vec![1, 2, 3], "broken", 4)).unwrap());
    match fin {
        Err(RuntimeError::AdapterLoad { name, source }) => {
            assert_eq!(name, "broken");
            assert!(
                matches!(*source, loraplex_adapters::AdapterError::Corrupt { .. }),
                "{source:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    h.shutdown();
}

#[test]
fn timings_account_for_a_cold_adapter_load() {
    let h = engine(EngineConfig::default());
    let timings = |adapter: &str| {
        let mut s = h.submit(request(vec![1, 2, 3], adapter, 3)).unwrap();
        loop {
            match s.blocking_next() {
                Some(TokenEvent::Finished { timings, .. }) => break timings,
                Some(TokenEvent::Failed(e)) => panic!("{e}"),
                Some(_) => {}
                None => panic!("no final event"),
            }
        }
    };
    let cold = timings("a-r8-qv");
    let warm = timings("a-r8-qv");
    let base = timings("base");
    assert!(cold.adapter_wait > Duration::ZERO, "{cold:?}");
    for t in [cold, warm, base] {
        assert!(t.adapter_wait <= t.queued && t.queued <= t.first_token);
        assert!(t.first_token <= t.total, "{t:?}");
    }
    assert_eq!(warm.adapter_wait, Duration::ZERO);
    assert_eq!(base.adapter_wait, Duration::ZERO);
    h.shutdown();
}

#[test]
fn a_bad_scheduler_configuration_is_a_typed_start_error() {
    let cfg = EngineConfig {
        scheduler: SchedulerConfig {
            max_running: 8,
            max_step_tokens: 8,
            max_waiting: 8,
            ..Default::default()
        },
        ..Default::default()
    };
    match loraplex_runtime::start(tiny_arc(), tiny_registry(), cfg) {
        Err(RuntimeError::InvalidConfig(m)) => assert!(m.contains("max_step_tokens"), "{m}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("started"),
    }
}
