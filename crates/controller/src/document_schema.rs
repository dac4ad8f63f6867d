//! The JSON Schema of a configuration document in the OpenAPI description.
//!
//! Written by hand because the derive cannot say what the API does: `kind` selects one of
//! two closed variants (a `oneOf` with a discriminator), a path rule takes exactly one of
//! `service` and `backends`, and every field's pattern and range is the one the validator in
//! `document.rs` applies. The schema is never stricter than the API (anything it refuses,
//! the API refuses) and looser only where JSON Schema cannot follow: unique host names and
//! paths, the 253-character host name limit, what `host:port` a backend may be.

use std::borrow::Cow;

use serde_json::{json, Map, Value};
use utoipa::openapi::schema::{ObjectBuilder, Schema};
use utoipa::openapi::RefOr;

use crate::document::IngressDocument;

/// The name the document's schema has among the components.
pub const NAME: &str = "IngressDocument";

/// A host name, or `*.` and a host name (`document::valid_hostname`).
pub const HOSTNAME_PATTERN: &str = r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$";
/// An absolute file path on the agent's host (`document::valid_file_path`).
pub const FILE_PATH_PATTERN: &str = r"^/[A-Za-z0-9/._+@=-]*$";
/// A location prefix (`document::valid_location`).
pub const LOCATION_PATTERN: &str = r"^/[A-Za-z0-9/._~%!*+,=:@-]*$";
/// A wave's share of the live agents (`document::WaveSize::Share`).
pub const WAVE_SHARE_PATTERN: &str = "^(100|[1-9][0-9]?)%$";
/// A registry service name (`ferry_registry::valid_name`).
pub const SERVICE_PATTERN: &str = r"^[A-Za-z0-9._-]{1,253}$";

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn seconds(what: &str) -> Value {
    json!({ "type": "integer", "minimum": 1, "maximum": 3600, "description": what })
}

/// The document's schema and the schemas it refers to, by component name.
pub fn components() -> Map<String, Value> {
    let mut c = Map::new();
    c.insert(
        NAME.into(),
        json!({
            "description": "A configuration: a typed ingress (`kind: ingress`) the built-in nginx templates render, or any JSON object (`kind: opaque`) for your own templates.",
            "oneOf": [reference("IngressDocumentIngress"), reference("IngressDocumentOpaque")],
            "discriminator": {
                "propertyName": "kind",
                "mapping": {
                    "ingress": "#/components/schemas/IngressDocumentIngress",
                    "opaque": "#/components/schemas/IngressDocumentOpaque"
                }
            }
        }),
    );
    c.insert(
        "IngressDocumentIngress".into(),
        json!({
            "type": "object",
            "required": ["kind", "virtual_hosts"],
            "additionalProperties": false,
            "properties": {
                "kind": { "type": "string", "enum": ["ingress"] },
                "virtual_hosts": { "type": "array", "minItems": 1, "items": reference("VirtualHost"),
                    "description": "Host names are unique (case-insensitively)." },
                "rollout": reference("RolloutStrategy")
            }
        }),
    );
    c.insert(
        "IngressDocumentOpaque".into(),
        json!({
            "type": "object",
            "required": ["kind", "data"],
            "additionalProperties": false,
            "properties": {
                "kind": { "type": "string", "enum": ["opaque"] },
                "data": { "type": "object", "description": "Any JSON object; templates read it." },
                "rollout": reference("RolloutStrategy")
            }
        }),
    );
    c.insert(
        "RolloutStrategy".into(),
        json!({
            "type": "object",
            "description": "A rollout in waves (all agents at once without one): each wave's agents run the new version; the next wave starts once all of them applied it and `bake_seconds` passed without a failure. A failure halts the rollout and, with `on_failure: rollback`, returns the wave's agents to the previous version.",
            "required": ["waves"],
            "additionalProperties": false,
            "properties": {
                "waves": { "type": "array", "minItems": 1, "maxItems": 10,
                    "description": "Cumulative sizes: a number of agents or a share of the live agents (rounded up); a last wave short of every agent is followed by one with all.",
                    "items": { "oneOf": [
                        { "type": "integer", "minimum": 1, "maximum": 100000 },
                        { "type": "string", "pattern": WAVE_SHARE_PATTERN }
                    ] } },
                "bake_seconds": { "type": "integer", "minimum": 0, "maximum": 86400, "default": 0 },
                "on_failure": { "type": "string", "enum": ["rollback", "halt"], "default": "rollback" }
            }
        }),
    );
    c.insert(
        "VirtualHost".into(),
        json!({
            "type": "object",
            "required": ["hostname", "paths"],
            "additionalProperties": false,
            "properties": {
                "hostname": { "type": "string", "pattern": HOSTNAME_PATTERN, "maxLength": 255,
                    "description": "`shop.example.com` or `*.example.com`, at most 253 characters after `*.`." },
                "tls": reference("Tls"),
                "paths": { "type": "array", "minItems": 1, "items": reference("PathRule"),
                    "description": "Paths are unique within the virtual host." }
            }
        }),
    );
    c.insert(
        "Tls".into(),
        json!({
            "type": "object",
            "required": ["certificate", "key"],
            "additionalProperties": false,
            "properties": {
                "certificate": { "type": "string", "pattern": FILE_PATH_PATTERN, "maxLength": 1024,
                    "description": "PEM certificate chain on the agent's host (absolute, no `..`)." },
                "key": { "type": "string", "pattern": FILE_PATH_PATTERN, "maxLength": 1024,
                    "description": "PEM private key on the agent's host (absolute, no `..`)." },
                "redirect_http": { "type": "boolean", "default": false,
                    "description": "Answer plain HTTP with a 308 redirect to HTTPS." }
            }
        }),
    );
    c.insert(
        "PathRule".into(),
        json!({
            "type": "object",
            "required": ["path"],
            "additionalProperties": false,
            "description": "Exactly one of `service` and `backends`.",
            "oneOf": [{ "required": ["service"] }, { "required": ["backends"] }],
            "properties": {
                "path": { "type": "string", "pattern": LOCATION_PATTERN, "maxLength": 1024,
                    "description": "Location prefix." },
                "service": { "type": "string", "pattern": SERVICE_PATTERN,
                    "description": "Registry service whose live instances are the upstream." },
                "backends": { "type": "array", "minItems": 1,
                    "items": { "type": "string", "minLength": 1, "description": "`host:port`" } },
                "connect_timeout_seconds": seconds("Connect timeout."),
                "read_timeout_seconds": seconds("Read timeout.")
            }
        }),
    );
    c
}

impl utoipa::PartialSchema for IngressDocument {
    /// A stand-in: `crate::openapi` puts [`components`] in its place.
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some("see components()"))
            .into()
    }
}

impl utoipa::ToSchema for IngressDocument {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed(NAME)
    }
}
