//! The OpenAPI 3 description of the REST API, served at `/openapi.json`.

use serde_json::{json, Value};

fn op(summary: &str, admin: bool, body: bool, ok: &str) -> Value {
    let mut v = json!({
        "summary": summary,
        "security": [{ "bearer": [] }],
        "responses": {
            ok: { "description": "success" },
            "401": { "description": "missing or unknown token" },
            "403": { "description": "the token does not cover this environment, or may only read" },
            "404": { "description": "no such configuration" }
        }
    });
    if admin {
        v["responses"]["412"] = json!({ "description": "If-Match is not the current version" });
        v["responses"]["428"] = json!({ "description": "If-Match missing" });
    }
    if body {
        v["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Document" } } } });
        v["responses"]["400"] = json!({ "description": "invalid document: error and field path" });
    }
    v
}

/// The document.
pub fn document() -> Value {
    let env =
        json!({ "name": "env", "in": "path", "required": true, "schema": { "type": "string" } });
    let id = json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } });
    json!({
        "openapi": "3.0.3",
        "info": { "title": "ferry controller", "version": env!("CARGO_PKG_VERSION") },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Document": {
                    "type": "object",
                    "required": ["kind"],
                    "properties": {
                        "kind": { "type": "string", "enum": ["ingress", "opaque"] },
                        "virtual_hosts": { "type": "array", "items": { "type": "object",
                            "required": ["hostname", "paths"],
                            "properties": {
                                "hostname": { "type": "string" },
                                "tls": { "type": "object", "required": ["certificate", "key"], "properties": { "certificate": { "type": "string" }, "key": { "type": "string" }, "redirect_http": { "type": "boolean", "default": false } } },
                                "paths": { "type": "array", "items": { "type": "object", "required": ["path"],
                                    "properties": {
                                        "path": { "type": "string" },
                                        "service": { "type": "string" },
                                        "backends": { "type": "array", "items": { "type": "string" } },
                                        "connect_timeout_seconds": { "type": "integer" },
                                        "read_timeout_seconds": { "type": "integer" }
                                    } } }
                            } } },
                        "data": { "type": "object" }
                    }
                }
            }
        },
        "paths": {
            "/healthz": { "get": { "summary": "liveness", "responses": { "200": { "description": "ok" } } } },
            "/readyz": { "get": { "summary": "SQL and etcd reachable", "responses": { "200": { "description": "ready" }, "503": { "description": "not ready" } } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "responses": { "200": { "description": "text format" } } } },
            "/api/v1/environments": { "get": op("environments and their live agents", false, false, "200") },
            "/api/v1/environments/{env}/configs": {
                "parameters": [env],
                "get": op("list configurations", false, false, "200"),
                "post": op("create a configuration", true, true, "201")
            },
            "/api/v1/environments/{env}/configs/{id}": {
                "parameters": [env, id],
                "get": op("get a configuration (ETag: its version)", false, false, "200"),
                "put": op("replace a configuration (If-Match: version)", true, true, "200"),
                "delete": op("delete a configuration (If-Match: version)", true, false, "200")
            },
            "/api/v1/environments/{env}/configs/{id}/history": { "parameters": [env, id], "get": op("every version", false, false, "200") },
            "/api/v1/environments/{env}/configs/{id}/rollback": {
                "parameters": [env, id, { "name": "version", "in": "query", "required": true, "schema": { "type": "integer" } }],
                "post": op("make an earlier version current again (If-Match: version)", true, false, "200")
            },
            "/api/v1/environments/{env}/configs/{id}/status": { "parameters": [env, id], "get": op("rollout status per live agent", false, false, "200") }
        }
    })
}
