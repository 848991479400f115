//! The dashboard's files: embedded, typed, revalidated by ETag, under a strict CSP; `/` leads
//! to them and the examples are served as the submit page reads them.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_root_redirects_to_the_dashboard() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = client.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/ui");
}

#[tokio::test]
async fn files_have_their_types_a_strict_policy_and_an_etag() {
    let app = spawn_app().await;
    for (path, kind) in [("/ui", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind), "{path}: {headers:?}");
        assert_eq!(headers["cache-control"], "no-cache");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        let etag = headers["etag"].clone();
        let again = app.client.get(app.url(path)).header("if-none-match", etag).send().await.unwrap();
        assert_eq!(again.status(), 304, "{path}");
    }
    let page = app.get("/ui").await.text().await.unwrap();
    assert!(page.contains(r#"<script type="module" src="/ui/app.js">"#) && !page.contains("<script>"));
    assert_eq!(app.get("/ui/missing.js").await.status(), 404);
}

#[tokio::test]
async fn the_examples_are_served_verbatim() {
    let app = spawn_app().await;
    let examples: Value = app.get_json("/ui/examples.json").await;
    let examples = examples.as_array().unwrap();
    let folder = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples")).unwrap();
    let files: Vec<_> = folder.map(|entry| entry.unwrap().path()).collect();
    assert_eq!(examples.len(), files.len(), "every example is offered");
    for file in files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let served = examples.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name} is not offered"));
        assert_eq!(served["text"], std::fs::read_to_string(&file).unwrap().as_str(), "{name}");
    }
}
