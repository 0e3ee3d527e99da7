//! Turning an untrusted upload into a PEFT folder in a staging directory: multipart fields
//! streamed to disk, then either the two files as sent or one archive unpacked under strict
//! rules. Nothing here decides whether the adapter is valid; it only makes sure the bytes that
//! reach the validator are exactly the two expected files, bounded in size.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use axum::extract::Multipart;
use loraplex_adapters::{CONFIG_FILE, WEIGHTS_FILE};
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;

/// Files PEFT writes next to the adapter that are accepted in an archive and ignored.
const IGNORED: &[&str] = &["README.md"];
/// Longest text field (name, description, labels).
const MAX_FIELD: usize = 64 << 10;

/// The non-file fields of an upload and the files it carried (saved in the staging folder).
#[derive(Debug, Default)]
pub struct UploadForm {
    pub name: Option<String>,
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// (original file name, where it was saved)
    pub files: Vec<(String, PathBuf)>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

fn multipart_err(e: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(limit)
    } else {
        bad(format!("invalid multipart body: {}", e.body_text()))
    }
}

/// Reads every field; file parts are streamed into `staging` (never held in memory whole).
pub async fn read_form(
    mut mp: Multipart,
    staging: &Path,
    limit: usize,
) -> Result<UploadForm, ApiError> {
    let mut form = UploadForm::default();
    let mut total = 0usize;
    while let Some(mut field) = mp.next_field().await.map_err(|e| multipart_err(e, limit))? {
        let field_name = field.name().unwrap_or_default().to_string();
        if let Some(file_name) = field.file_name().map(str::to_string) {
            let dest = staging.join(format!("upload-{}", form.files.len()));
            let f = tokio::fs::File::create(&dest)
                .await
                .map_err(|e| ApiError::Internal(format!("staging {}: {e}", dest.display())))?;
            // Multipart chunks are small; one blocking write per chunk would dominate.
            let mut f = tokio::io::BufWriter::with_capacity(1 << 20, f);
            while let Some(chunk) = field.chunk().await.map_err(|e| multipart_err(e, limit))? {
                total += chunk.len();
                if total > limit {
                    return Err(ApiError::PayloadTooLarge(limit));
                }
                f.write_all(&chunk)
                    .await
                    .map_err(|e| ApiError::Internal(format!("staging: {e}")))?;
            }
            f.flush()
                .await
                .map_err(|e| ApiError::Internal(format!("staging: {e}")))?;
            form.files.push((file_name, dest));
            continue;
        }
        let mut text = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_err(e, limit))? {
            text.extend_from_slice(&chunk);
            if text.len() > MAX_FIELD {
                return Err(bad(format!(
                    "field {field_name:?} exceeds {MAX_FIELD} bytes"
                )));
            }
        }
        let text = String::from_utf8(text)
            .map_err(|_| bad(format!("field {field_name:?} is not UTF-8")))?;
        match field_name.as_str() {
            "name" => form.name = Some(text.trim().to_string()),
            "description" => form.description = Some(text),
            "labels" => {
                form.labels = serde_json::from_str(&text)
                    .map_err(|e| bad(format!("labels must be a JSON object of strings: {e}")))?
            }
            "label" => {
                let (k, v) = text
                    .split_once('=')
                    .ok_or_else(|| bad("label must be key=value"))?;
                form.labels.insert(k.to_string(), v.to_string());
            }
            other => tracing::info!(field = other, "ignoring unknown upload field"),
        }
    }
    Ok(form)
}

/// Puts `adapter_config.json` and `adapter_model.safetensors` at the root of `staging` from the
/// uploaded files (the two files themselves, or one archive of the folder), then removes the
/// uploaded originals. Blocking: run it off the async threads.
pub fn assemble(staging: &Path, files: &[(String, PathBuf)], limit: u64) -> Result<(), ApiError> {
    let base = |n: &str| n.rsplit(['/', '\\']).next().unwrap_or(n).to_string();
    // The files as sent (at least one has a PEFT name), or else an archive of them.
    let plain = files
        .iter()
        .any(|(n, _)| [CONFIG_FILE, WEIGHTS_FILE].contains(&base(n).as_str()));
    if files.is_empty() {
        return Err(bad(format!(
            "no files: send {CONFIG_FILE} and {WEIGHTS_FILE}, or one .tar, .tar.gz or .zip of the adapter folder"
        )));
    }
    if plain {
        for (n, p) in files {
            let b = base(n);
            if IGNORED.contains(&b.as_str()) {
                continue;
            }
            if ![CONFIG_FILE, WEIGHTS_FILE].contains(&b.as_str()) {
                return Err(bad(format!("unexpected file {n:?}")));
            }
            let dest = staging.join(&b);
            if dest.exists() {
                return Err(bad(format!("{b} sent twice")));
            }
            std::fs::rename(p, &dest).map_err(|e| ApiError::Internal(e.to_string()))?;
        }
    } else if files.len() == 1 {
        unpack(&files[0].1, staging, limit)?;
        let _ = std::fs::remove_file(&files[0].1);
    } else {
        return Err(bad(
            "send the two adapter files, or exactly one archive of the adapter folder",
        ));
    }
    for f in [CONFIG_FILE, WEIGHTS_FILE] {
        if !staging.join(f).is_file() {
            return Err(bad(format!("the upload has no {f}")));
        }
    }
    Ok(())
}

/// Where an archive member goes: one of the two files, at the top or under one folder.
/// `Ok(None)` skips it (folders, README.md); anything else is refused.
fn member_target(name: &str, is_dir: bool) -> Result<Option<&'static str>, ApiError> {
    let refuse = |why: &str| bad(format!("archive member {name:?}: {why}"));
    if name.contains('\\') || name.contains('\0') {
        return Err(refuse(
            "backslashes and NUL are not allowed in member names",
        ));
    }
    let mut parts = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => return Err(refuse("absolute paths and '..' are not allowed")),
        }
    }
    if is_dir {
        return if parts.len() <= 1 {
            Ok(None)
        } else {
            Err(refuse("nested folders are not allowed"))
        };
    }
    if parts.is_empty() || parts.len() > 2 {
        return Err(refuse(
            "expected the adapter files at the top or in one folder",
        ));
    }
    let file = parts.last().expect("not empty").as_str();
    match file {
        CONFIG_FILE => Ok(Some(CONFIG_FILE)),
        WEIGHTS_FILE => Ok(Some(WEIGHTS_FILE)),
        f if IGNORED.contains(&f) => Ok(None),
        _ => Err(refuse(&format!(
            "only {CONFIG_FILE} and {WEIGHTS_FILE} are accepted"
        ))),
    }
}

/// Copies at most `budget` bytes; more means a bomb (or simply too large).
fn copy_bounded(src: &mut impl Read, dest: &Path, budget: &mut u64) -> Result<(), ApiError> {
    if dest.exists() {
        return Err(bad(format!(
            "the archive holds {} twice",
            dest.file_name().unwrap_or_default().to_string_lossy()
        )));
    }
    let mut f = std::fs::File::create(dest).map_err(|e| ApiError::Internal(e.to_string()))?;
    let n = std::io::copy(&mut src.take(*budget + 1), &mut f)
        .map_err(|e| bad(format!("cannot read the archive: {e}")))?;
    if n > *budget {
        return Err(bad(
            "the archive unpacks to more than the upload size limit",
        ));
    }
    *budget -= n;
    f.flush().map_err(|e| ApiError::Internal(e.to_string()))
}

/// Unpacks a `.tar`, `.tar.gz` or `.zip` (recognised by content, not name).
fn unpack(archive: &Path, staging: &Path, limit: u64) -> Result<(), ApiError> {
    let mut head = [0u8; 262];
    let n = std::fs::File::open(archive)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let head = &head[..n];
    let open = || std::fs::File::open(archive).map_err(|e| ApiError::Internal(e.to_string()));
    let mut budget = limit;
    if head.starts_with(b"PK\x03\x04") {
        let mut zip = zip::ZipArchive::new(open()?)
            .map_err(|e| bad(format!("not a valid zip archive: {e}")))?;
        for i in 0..zip.len() {
            let mut m = zip
                .by_index(i)
                .map_err(|e| bad(format!("zip member {i}: {e}")))?;
            let name = m
                .name()
                .map_err(|e| bad(format!("zip member {i}: {e}")))?
                .into_owned();
            if m.is_symlink() {
                return Err(bad(format!("archive member {name:?}: links are refused")));
            }
            if let Some(t) = member_target(&name, m.is_dir())? {
                copy_bounded(&mut m, &staging.join(t), &mut budget)?;
            }
        }
        return Ok(());
    }
    let reader: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(open()?))
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Box::new(open()?)
    } else {
        return Err(bad(
            "unrecognised upload: send the two adapter files, or a .tar, .tar.gz or .zip",
        ));
    };
    let mut tar = tar::Archive::new(reader);
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("not a valid tar archive: {e}")))?;
    for entry in entries {
        let mut e = entry.map_err(|e| bad(format!("not a valid tar archive: {e}")))?;
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let kind = e.header().entry_type();
        let is_dir = kind.is_dir();
        if !(is_dir || kind.is_file()) {
            if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
                continue;
            }
            return Err(bad(format!(
                "archive member {name:?}: only regular files are accepted (no links or devices)"
            )));
        }
        if let Some(t) = member_target(&name, is_dir)? {
            copy_bounded(&mut e, &staging.join(t), &mut budget)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::member_target;

    #[test]
    fn member_names_are_confined_to_the_two_files() {
        assert_eq!(
            member_target("adapter_config.json", false).unwrap(),
            Some("adapter_config.json")
        );
        assert_eq!(
            member_target("./my-adapter/adapter_model.safetensors", false).unwrap(),
            Some("adapter_model.safetensors")
        );
        assert_eq!(member_target("my-adapter/README.md", false).unwrap(), None);
        assert_eq!(member_target("my-adapter/", true).unwrap(), None);
        for bad in [
            "../adapter_config.json",
            "/etc/adapter_config.json",
            "a/b/adapter_config.json",
            "a\\..\\adapter_config.json",
            "evil.sh",
        ] {
            assert!(member_target(bad, false).is_err(), "{bad}");
        }
        assert!(member_target("a/b/", true).is_err());
    }
}
