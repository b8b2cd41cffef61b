//! The written contract agrees with itself and with the repository:
//! every route in `src/api/openapi.json` (what the server serves at
//! `/openapi.json`) is described in `docs/API.md` and every route the
//! document describes is in the spec, and the README's and docs' links
//! point at files that exist in the repository (never outside it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(METHOD, /path)` pairs written in backticks in a Markdown text, such
/// as `` `GET /v1/jobs/{id}` ``; a path ending in `...` is prose.
fn routes_in_markdown(text: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for piece in text.split('`').skip(1).step_by(2) {
        let Some((method, path)) = piece.split_once(' ') else {
            continue;
        };
        if !METHODS.contains(&method) || !path.starts_with('/') {
            continue;
        }
        let path = path.split(['?', ' ']).next().unwrap_or(path);
        if !path.ends_with("...") {
            out.insert((method.to_string(), path.to_string()));
        }
    }
    out
}

fn routes_in_spec() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(repo().join("src/api/openapi.json")).unwrap();
    let spec: serde_json::Value = serde_json::from_str(&text).expect("openapi.json parses");
    let mut out = BTreeSet::new();
    for (path, ops) in spec["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            let method = method.to_ascii_uppercase();
            if METHODS.contains(&method.as_str()) {
                out.insert((method, path.clone()));
            }
        }
    }
    out
}

#[test]
fn the_api_document_and_the_openapi_spec_name_the_same_routes() {
    let doc = std::fs::read_to_string(repo().join("docs/API.md")).unwrap();
    let documented = routes_in_markdown(&doc);
    let specified = routes_in_spec();
    assert!(
        specified.len() > 30,
        "{} routes in the spec",
        specified.len()
    );
    let undocumented: Vec<_> = specified.difference(&documented).collect();
    let unspecified: Vec<_> = documented.difference(&specified).collect();
    assert!(
        undocumented.is_empty(),
        "in openapi.json but not in docs/API.md: {undocumented:?}"
    );
    assert!(
        unspecified.is_empty(),
        "in docs/API.md but not in openapi.json: {unspecified:?}"
    );
}

/// Relative link targets of a Markdown text: `](target)`, without anchors.
fn links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target.to_string()))
        .filter(|t| !t.starts_with("http://") && !t.starts_with("https://") && !t.starts_with('#'))
        .filter(|t| !t.starts_with("mailto:"))
        .map(|t| t.split('#').next().unwrap_or_default().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

#[test]
fn readme_and_docs_link_only_to_files_in_the_repository() {
    let root = repo().canonicalize().unwrap();
    let mut pages = vec![root.join("README.md"), root.join("CHANGELOG.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let dir = page.parent().unwrap_or(Path::new("."));
        for target in links(&text) {
            checked += 1;
            let resolved = dir.join(&target);
            match resolved.canonicalize() {
                Ok(p) if p.starts_with(&root) => {}
                Ok(p) => broken.push(format!(
                    "{}: {target} leaves the repository ({})",
                    page.display(),
                    p.display()
                )),
                Err(_) => broken.push(format!("{}: {target} does not exist", page.display())),
            }
        }
    }
    assert!(checked >= 10, "only {checked} links found");
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn the_markdown_route_reader_reads_what_the_document_writes() {
    let found = routes_in_markdown(
        "**`POST /v1/files`** (member) and `GET /v1/jobs/{id}/events?after=3`, not \
         `GET /v1/jobs...` nor `murmur serve` nor `GET`",
    );
    let want: BTreeSet<_> = [("POST", "/v1/files"), ("GET", "/v1/jobs/{id}/events")]
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(found, want);
    assert_eq!(
        links("see [a](docs/API.md#x), [b](https://x.example) and [c](#y)"),
        ["docs/API.md"]
    );
}
