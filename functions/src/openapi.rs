//! The OpenAPI document. It is generated from the same route tables the routers mount (each
//! handler's `#[utoipa::path]` and its types' schemas), so a route cannot exist without its
//! documentation; the route guard adds each operation's security and auth answers. Served at
//! `/openapi.json` with Swagger UI at `/docs`, and committed as `openapi/splai.yaml` (a test
//! fails when the two differ; `splai openapi > openapi/splai.yaml` rewrites it).

use axum::Router;
use utoipa::openapi::path::{Operation, Paths};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref};
use utoipa::{Modify, OpenApi};

pub use crate::error::{ErrorBody, ErrorDetail};
use utoipa_swagger_ui::SwaggerUi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "SPLAI",
        description = "The SPLAI control plane: submit AI jobs, follow them, run their tasks on \
                       workers, and operate the fabric. Every route but health and this document \
                       needs a token once `SPLAI_API_TOKENS` is set; each operation lists the \
                       scopes that satisfy it (`admin` satisfies all).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "jobs", description = "Submit, list, follow, cancel and retry jobs"),
        (name = "workers", description = "The worker protocol: register, heartbeat, claim, report"),
        (name = "admin", description = "Dead letters, audit, model prefetch"),
        (name = "metrics", description = "Counters and histograms, JSON and Prometheus"),
        (name = "policy", description = "The effective policy and dry runs"),
        (name = "openai", description = "OpenAI-compatible API (SPLAI_OPENAI_COMPAT=true)"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
struct Base;

/// The two ways to send a token.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut Document) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            BEARER,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        c.add_security_scheme(
            TOKEN_HEADER,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-SPLAI-Token"))),
        );
    }
}

/// One server-sent event of a `text/event-stream` answer, for response schemas.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema only: axum's `Sse` writes events.
pub struct SseEvent {
    /// The event's name (`job.snapshot`, `task.completed`, `job.status`, ...); none for the
    /// OpenAI chunks.
    event: Option<String>,
    /// The payload: JSON text, or `[DONE]` at the end of an OpenAI stream.
    data: String,
}

/// Raw bytes (an artifact download), for response schemas.
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

const BEARER: &str = "bearer";
const TOKEN_HEADER: &str = "token";

/// Marks every operation of `paths` as needing one of `scopes` (`admin` always satisfies), and
/// adds the answers every guarded route can give: 401, 403, and 503 when a backend is down.
pub(crate) fn require(paths: &mut Paths, scopes: &[&str]) {
    for item in paths.paths.values_mut() {
        for op in operations(item) {
            let mut with_admin: Vec<&str> = scopes.to_vec();
            with_admin.push("admin");
            op.security = Some(vec![
                SecurityRequirement::new(BEARER, with_admin.clone()),
                SecurityRequirement::new(TOKEN_HEADER, with_admin),
            ]);
            add_error(op, 401, "No token, or one the server does not know");
            add_error(op, 403, "The token lacks the scope or tenant this needs");
            add_error(op, 503, "A backend is unavailable; retry later");
            if op.request_body.is_some() {
                add_error(op, 400, "The body is malformed or invalid");
                add_error(op, 413, "The body is larger than SPLAI_MAX_BODY_BYTES");
            }
        }
    }
}

/// The operations of a path item, whatever their method.
fn operations(item: &mut utoipa::openapi::path::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// Documents an error answer unless the operation already describes that status.
fn add_error(op: &mut Operation, status: u16, description: &str) {
    let json = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content("application/json", json)
                .build()
                .into()
        });
}

/// Points a router's error answers at `schema` instead of [`ErrorBody`]: the OpenAI router
/// reshapes every error, and its handlers' annotations bring that schema along.
pub(crate) fn replace_error_schema(doc: &mut Document, schema: &str) {
    let from = Ref::from_schema_name("ErrorBody").ref_location;
    let to = Ref::from_schema_name(schema).ref_location;
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            for response in op.responses.responses.values_mut() {
                let utoipa::openapi::RefOr::T(response) = response else {
                    continue;
                };
                for content in response.content.values_mut() {
                    let utoipa::openapi::RefOr::T(content) = content else {
                        continue;
                    };
                    if let Some(utoipa::openapi::RefOr::Ref(r)) = &mut content.schema
                        && r.ref_location == from
                    {
                        r.ref_location.clone_from(&to);
                    }
                }
            }
        }
    }
}

/// The document of the routers a server mounts (the OpenAI-compatible routes only when
/// `openai` is set).
pub fn document(openai: bool) -> Document {
    let mut doc = Base::openapi();
    doc.merge(crate::gateway::routes(None).into_openapi());
    doc.merge(crate::admin::routes(None).into_openapi());
    doc.merge(crate::policy::routes(None).into_openapi());
    if openai {
        doc.merge(crate::openai::routes(None).into_openapi());
    }
    doc
}

/// The whole API as YAML: the committed `openapi/splai.yaml`.
///
/// # Panics
/// Never in practice: the document is plain data.
pub fn yaml() -> String {
    document(true)
        .to_yaml()
        .expect("the OpenAPI document serialises")
}

/// `/openapi.json` serving `doc`, and Swagger UI at `/docs` browsing it. Open to everyone: the
/// document holds no secrets, and clients need it before they hold a token.
pub fn router(doc: Document) -> Router {
    SwaggerUi::new("/docs").url("/openapi.json", doc).into()
}
