//! The OpenAPI document: the committed `openapi/splai.yaml` is what the routes generate, the
//! server serves exactly that document (with the routes it mounts), Swagger UI browses it, and
//! every route but health is documented as needing a token.

use reqwest::StatusCode;
use serde_json::Value;
use splai_functions::openapi;

use crate::helpers::*;

const COMMITTED: &str = include_str!("../../../openapi/splai.yaml");

/// The committed file is what the routes generate: a route, a handler's annotation or a wire
/// type that changes without `openapi/splai.yaml` fails here.
#[test]
fn committed_document_matches_the_routes() {
    let generated = openapi::yaml();
    if generated != COMMITTED {
        let first = generated
            .lines()
            .zip(COMMITTED.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "a different length".to_owned(),
                |n| format!("line {}", n + 1),
            );
        panic!(
            "openapi/splai.yaml differs from the generated document at {first}; regenerate it \
             with `cargo run -p splai-functions --bin splai -- openapi > openapi/splai.yaml`"
        );
    }
}

/// `/openapi.json` is the generated document of the mounted routers; with the OpenAI
/// compatibility on, that is the committed file.
#[tokio::test]
async fn served_document_is_the_committed_one() {
    let committed: Value = yaml_serde::from_str(COMMITTED).expect("the committed file is YAML");
    let app = spawn_app_with(&[("SPLAI_OPENAI_COMPAT", "true")]).await;
    let (status, served) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, committed);
    assert_eq!(served["openapi"], "3.1.0");

    let plain = spawn_app().await;
    let (_, served) = plain.get("/openapi.json").await;
    let paths = served["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/v1/jobs"));
    assert!(
        !paths.contains_key("/v1/chat/completions"),
        "routes that are not mounted are not documented"
    );
}

/// Swagger UI answers at `/docs/` (and `/docs` sends the browser there), pointed at the
/// served document.
#[tokio::test]
async fn docs_serve_swagger_ui() {
    let app = spawn_app().await;
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = no_redirect
        .get(app.url("/docs"))
        .send()
        .await
        .expect("GET /docs");
    assert!(resp.status().is_redirection(), "{}", resp.status());
    assert_eq!(resp.headers()["location"], "/docs/");

    let resp = app
        .http
        .get(app.url("/docs/"))
        .send()
        .await
        .expect("GET /docs/");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.expect("html").contains("swagger-ui"));
    let resp = app
        .http
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .expect("initializer");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.expect("js").contains("/openapi.json"));
}

/// The document and the UI need no token even when auth is on: clients read them first.
#[tokio::test]
async fn document_is_open_when_auth_is_on() {
    let app = spawn_app_with(&[("SPLAI_API_TOKENS", "root-tok:admin")]).await;
    let (status, _) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.get("/v1/jobs").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the API itself is guarded"
    );
}

/// Every operation but health names the scopes that satisfy it (admin among them) and
/// documents the 401 and 403 answers; health needs nothing.
#[test]
fn every_guarded_operation_documents_its_scopes() {
    let doc = serde_json::to_value(openapi::document(true)).expect("JSON");
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let at = format!("{method} {path}");
            if path == "/healthz" || path == "/readyz" {
                assert!(op.get("security").is_none(), "{at} is open");
                continue;
            }
            let security = op["security"].as_array().unwrap_or_else(|| panic!("{at}"));
            let scopes = security[0]["bearer"].as_array().expect("bearer scopes");
            assert!(scopes.contains(&Value::from("admin")), "{at}");
            assert_eq!(security[1]["token"], security[0]["bearer"], "{at}");
            for status in ["401", "403"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{at} documents {status}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 29, "only {checked} operations");
}
