//! The OpenAPI 3.1 document served at `/openapi.json`: the operations come from the
//! handlers (`utoipa`); this adds what every operation shares (the bearer scheme, the
//! refusals every secured operation can answer) and the configuration document's schema.

use serde_json::{json, Value};
use utoipa::openapi::OpenApi;

/// Refusals every secured operation can answer, besides those it declares itself.
const COMMON_REFUSALS: [(&str, &str); 4] = [
    (
        "400",
        "A parameter, header or the body is invalid: `error` says why, `field` names it",
    ),
    ("401", "The bearer token is missing or unknown"),
    (
        "403",
        "The token may only read, or does not cover this environment",
    ),
    ("500", "The SQL database failed"),
];

const METHODS: [&str; 4] = ["get", "put", "post", "delete"];

/// The served document for the operations in `api`.
pub fn finish(api: OpenApi) -> Value {
    let mut doc = serde_json::to_value(&api).unwrap_or_else(|_| json!({}));
    doc["info"] = json!({
        "title": "ferry controller",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Ingress configurations per environment: every version kept in SQL, published to etcd, applied by agents. Every change takes `If-Match` with the version it changes; every refusal is an `ErrorBody`."
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            for method in METHODS {
                let op = &mut item[method];
                if op.is_null() {
                    if let Some(item) = item.as_object_mut() {
                        item.remove(method);
                    }
                    continue;
                }
                if op.get("security").is_none() {
                    continue;
                }
                for (status, description) in COMMON_REFUSALS {
                    if op["responses"].get(status).is_none() {
                        op["responses"][status] = json!({
                            "description": description,
                            "content": { "application/json": {
                                "schema": { "$ref": "#/components/schemas/ErrorBody" } } }
                        });
                    }
                }
            }
        }
    }
    doc["components"]["securitySchemes"] = json!({
        "bearer": { "type": "http", "scheme": "bearer",
            "description": "A token from the controller's token file (`ferry token`)." }
    });
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        schemas.extend(crate::document_schema::components());
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Value {
        crate::api::openapi_document()
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                ops.push((path.clone(), method.clone(), op.clone()));
            }
        }
        ops
    }

    #[test]
    fn every_operation_declares_its_refusals_as_error_bodies() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let ops = operations(&doc);
        assert!(ops.len() >= 13, "{ops:?}");
        for (path, method, op) in &ops {
            assert!(op["operationId"].is_string(), "{method} {path}");
            if op.get("security").is_none() {
                continue;
            }
            for status in ["400", "401", "403", "500"] {
                assert_eq!(
                    op["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }

    #[test]
    fn writes_declare_if_match_with_the_pattern_the_parser_takes() {
        let doc = document();
        for (path, method, op) in operations(&doc) {
            let takes_if_match = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == "If-Match");
            let is_change = method == "put" || method == "delete" || path.ends_with("/rollback");
            assert_eq!(takes_if_match.is_some(), is_change, "{method} {path}");
            if let Some(p) = takes_if_match {
                assert_eq!(p["in"], "header");
                assert_eq!(p["required"], true);
                assert_eq!(
                    p["schema"]["pattern"],
                    crate::api::IF_MATCH_PATTERN,
                    "{method} {path}"
                );
                for status in ["412", "428"] {
                    assert!(
                        op["responses"].get(status).is_some(),
                        "{method} {path} {status}"
                    );
                }
            }
            if path.contains("{env}") {
                let env = op["parameters"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["name"] == "env"))
                    .unwrap_or_else(|| panic!("{method} {path}: no env parameter"));
                assert_eq!(env["schema"]["pattern"], crate::keys::ENV_PATTERN);
            }
        }
    }

    #[test]
    fn links_name_existing_operations_and_parameters() {
        let doc = document();
        let ops = operations(&doc);
        let mut links = 0;
        for (_, _, op) in &ops {
            for response in op["responses"].as_object().into_iter().flatten() {
                for (_, link) in response.1["links"].as_object().into_iter().flatten() {
                    links += 1;
                    let target = ops
                        .iter()
                        .find(|(_, _, o)| o["operationId"] == link["operationId"])
                        .unwrap_or_else(|| panic!("no operation {}", link["operationId"]));
                    for (name, _) in link["parameters"].as_object().expect("parameters") {
                        let bare = name.rsplit('.').next().unwrap_or(name);
                        assert!(
                            target.2["parameters"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|p| p["name"] == bare),
                            "link to {} sets unknown parameter {name}",
                            link["operationId"]
                        );
                    }
                }
            }
        }
        assert!(links >= 10, "{links} links");
    }

    #[test]
    fn the_document_schema_is_two_closed_variants() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["IngressDocument"]["oneOf"].as_array().map(Vec::len),
            Some(2)
        );
        for variant in ["IngressDocumentIngress", "IngressDocumentOpaque"] {
            assert_eq!(schemas[variant]["additionalProperties"], false, "{variant}");
        }
        for name in [
            "VirtualHost",
            "Tls",
            "PathRule",
            "ConfigRecord",
            "Changed",
            "Rollout",
            "ErrorBody",
        ] {
            assert!(schemas.get(name).is_some(), "{name} missing");
        }
        assert_eq!(
            doc["paths"]["/api/v1/environments/{env}/configs"]["post"]["requestBody"]["content"]
                ["application/json"]["schema"]["$ref"],
            "#/components/schemas/IngressDocument"
        );
    }
}
