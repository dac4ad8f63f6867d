//! etcd's JSON gateway (`POST /v3/...`) against `ferry store` and real etcd 3.4, with the same
//! assertions: proto field names, 64-bit integers as strings, bytes as base64, the error shape
//! and HTTP status, `/v3beta`, and the `Authorization` header as the token.

mod common;

use std::time::Duration;

use common::Server;
use ferry_controller::http_client::{request, HttpReply};
use serde_json::{json, Value};

against_both!(&["--bcrypt-cost", "4"];
    keys_are_written_read_and_deleted_as_json,
    a_transaction_and_a_lease_round_trip,
    refusals_have_etcds_error_shape_and_status,
    the_authorization_header_carries_the_token,
    cluster_and_maintenance_answer,
    a_watch_streams_history_and_puts_made_over_grpc,
    a_lease_is_kept_alive_and_a_snapshot_streams,
);

async fn post(server: &Server, path: &str, body: Value) -> anyhow::Result<HttpReply> {
    Ok(request(
        &server.endpoint(),
        "POST",
        path,
        None,
        &[],
        &body.to_string(),
    )
    .await?)
}

async fn post_ok(server: &Server, path: &str, body: Value) -> anyhow::Result<Value> {
    let reply = post(server, path, body).await?;
    anyhow::ensure!(
        reply.status == 200,
        "{path}: {} {}",
        reply.status,
        reply.body
    );
    Ok(serde_json::from_str(&reply.body)?)
}

/// A revision in a header: a decimal string, as grpc-gateway writes 64-bit integers.
fn revision(v: &Value) -> i64 {
    v["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(-1)
}

async fn keys_are_written_read_and_deleted_as_json(server: &Server) -> anyhow::Result<()> {
    // "foo" = Zm9v, "bar" = YmFy.
    let put = post_ok(
        server,
        "/v3/kv/put",
        json!({"key": "Zm9v", "value": "YmFy"}),
    )
    .await?;
    let written = revision(&put);
    assert!(written > 1, "{put}");
    assert!(put["header"]["cluster_id"].is_string(), "{put}");
    let range = post_ok(server, "/v3/kv/range", json!({"key": "Zm9v"})).await?;
    assert_eq!(range["count"], "1", "{range}");
    let kv = &range["kvs"][0];
    assert_eq!(kv["key"], "Zm9v");
    assert_eq!(kv["value"], "YmFy");
    assert_eq!(kv["version"], "1");
    assert_eq!(kv["create_revision"], written.to_string());
    assert!(kv.get("lease").is_none(), "zero values are left out: {kv}");
    assert!(range.get("more").is_none(), "{range}");
    // /v3beta is /v3; numbers may be sent as numbers; enums by name.
    let sorted = post_ok(
        server,
        "/v3beta/kv/range",
        json!({"key": "Zm9v", "range_end": "Zm9w", "limit": 5, "sort_order": "DESCEND"}),
    )
    .await?;
    assert_eq!(sorted["kvs"][0]["value"], "YmFy");
    let missing = post_ok(server, "/v3/kv/range", json!({"key": "bm9uZQ=="})).await?;
    assert!(
        missing.get("kvs").is_none() && missing.get("count").is_none(),
        "{missing}"
    );
    let deleted = post_ok(
        server,
        "/v3/kv/deleterange",
        json!({"key": "Zm9v", "prev_kv": true}),
    )
    .await?;
    assert_eq!(deleted["deleted"], "1", "{deleted}");
    assert_eq!(deleted["prev_kvs"][0]["value"], "YmFy");
    Ok(())
}

async fn a_transaction_and_a_lease_round_trip(server: &Server) -> anyhow::Result<()> {
    post_ok(
        server,
        "/v3/kv/put",
        json!({"key": "Zm9v", "value": "YmFy"}),
    )
    .await?;
    let txn = post_ok(
        server,
        "/v3/kv/txn",
        json!({
            "compare": [{"key": "Zm9v", "target": "VALUE", "result": "EQUAL", "value": "YmFy"}],
            "success": [{"request_put": {"key": "Zm9v", "value": "YmF6"}}, {"request_range": {"key": "Zm9v"}}],
            "failure": [{"request_delete_range": {"key": "Zm9v"}}],
        }),
    )
    .await?;
    assert_eq!(txn["succeeded"], true, "{txn}");
    assert!(txn["responses"][0]["response_put"].is_object(), "{txn}");
    assert_eq!(
        txn["responses"][1]["response_range"]["kvs"][0]["value"],
        "YmF6"
    );
    let grant = post_ok(server, "/v3/lease/grant", json!({"TTL": "60"})).await?;
    let id = grant["ID"].as_str().unwrap_or_default().to_string();
    assert!(id.parse::<i64>().is_ok_and(|id| id > 0), "{grant}");
    assert_eq!(grant["TTL"], "60");
    post_ok(
        server,
        "/v3/kv/put",
        json!({"key": "bGVhc2Vk", "value": "eA==", "lease": id}),
    )
    .await?;
    let ttl = post_ok(
        server,
        "/v3/lease/timetolive",
        json!({"ID": id, "keys": true}),
    )
    .await?;
    assert_eq!(ttl["grantedTTL"], "60", "{ttl}");
    assert_eq!(ttl["keys"][0], "bGVhc2Vk");
    let leases = post_ok(server, "/v3/lease/leases", json!({})).await?;
    assert!(
        leases["leases"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["ID"] == id)),
        "{leases}"
    );
    post_ok(server, "/v3/lease/revoke", json!({"ID": id})).await?;
    let gone = post_ok(server, "/v3/kv/range", json!({"key": "bGVhc2Vk"})).await?;
    assert!(gone.get("kvs").is_none(), "{gone}");
    Ok(())
}

async fn refusals_have_etcds_error_shape_and_status(server: &Server) -> anyhow::Result<()> {
    let empty_key = post(server, "/v3/kv/put", json!({"value": "eA=="})).await?;
    assert_eq!(empty_key.status, 400, "{}", empty_key.body);
    let body: Value = serde_json::from_str(&empty_key.body)?;
    assert_eq!(body["error"], "etcdserver: key is not provided");
    assert_eq!(body["message"], "etcdserver: key is not provided");
    assert_eq!(body["code"], 3);
    let future = post(
        server,
        "/v3/kv/range",
        json!({"key": "eA==", "revision": "1000"}),
    )
    .await?;
    assert_eq!(future.status, 400, "{}", future.body);
    let body: Value = serde_json::from_str(&future.body)?;
    assert_eq!(body["code"], 11);
    let no_lease = post(server, "/v3/lease/revoke", json!({"ID": "12345"})).await?;
    assert_eq!(no_lease.status, 404, "{}", no_lease.body);
    assert_eq!(
        serde_json::from_str::<Value>(&no_lease.body)?["error"],
        "etcdserver: requested lease not found"
    );
    let unknown = post(server, "/v3/kv/nothing", json!({})).await?;
    assert_eq!(unknown.status, 404);
    let wrong_method = request(&server.endpoint(), "GET", "/v3/kv/range", None, &[], "").await?;
    assert_eq!(wrong_method.status, 405);
    Ok(())
}

async fn the_authorization_header_carries_the_token(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    c.user_add("root", "rootpw", None).await?;
    c.user_grant_role("root", "root").await?;
    c.auth_enable().await?;
    let anonymous = post(server, "/v3/kv/range", json!({"key": "eA=="})).await?;
    assert_eq!(anonymous.status, 400, "{}", anonymous.body);
    assert_eq!(
        serde_json::from_str::<Value>(&anonymous.body)?["error"],
        "etcdserver: user name is empty"
    );
    let wrong = post(
        server,
        "/v3/auth/authenticate",
        json!({"name": "root", "password": "nope"}),
    )
    .await?;
    assert_eq!(wrong.status, 400, "{}", wrong.body);
    let signed_in = post_ok(
        server,
        "/v3/auth/authenticate",
        json!({"name": "root", "password": "rootpw"}),
    )
    .await?;
    let token = signed_in["token"].as_str().unwrap_or_default().to_string();
    assert!(!token.is_empty(), "{signed_in}");
    let headers = [("Authorization", token)];
    let allowed = request(
        &server.endpoint(),
        "POST",
        "/v3/kv/put",
        None,
        &headers,
        &json!({"key": "eA==", "value": "eQ=="}).to_string(),
    )
    .await?;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let bad = request(
        &server.endpoint(),
        "POST",
        "/v3/kv/range",
        None,
        &[("Authorization", "not-a-token".to_string())],
        &json!({"key": "eA=="}).to_string(),
    )
    .await?;
    assert_eq!(bad.status, 401, "{}", bad.body);
    let users = request(
        &server.endpoint(),
        "POST",
        "/v3/auth/user/list",
        None,
        &headers,
        "{}",
    )
    .await?;
    assert_eq!(users.status, 200, "{}", users.body);
    assert_eq!(
        serde_json::from_str::<Value>(&users.body)?["users"],
        json!(["root"])
    );
    Ok(())
}

async fn cluster_and_maintenance_answer(server: &Server) -> anyhow::Result<()> {
    let members = post_ok(server, "/v3/cluster/member/list", json!({})).await?;
    let member = &members["members"][0];
    assert!(
        member["ID"]
            .as_str()
            .is_some_and(|id| id.parse::<u64>().is_ok()),
        "{members}"
    );
    assert!(member["clientURLs"].is_array(), "{members}");
    let status = post_ok(server, "/v3/maintenance/status", json!({})).await?;
    assert!(
        status["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{status}"
    );
    assert!(status["dbSize"].is_string(), "{status}");
    let alarms = post_ok(server, "/v3/maintenance/alarm", json!({"action": "GET"})).await?;
    assert!(alarms.get("alarms").is_none(), "{alarms}");
    let hash = post_ok(server, "/v3/maintenance/hash", json!({})).await?;
    assert!(hash["hash"].is_number(), "{hash}");
    Ok(())
}

mod streams {
    use std::time::Duration;

    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// POSTs `body` to `path` and collects `{"result":…}` lines until `count` arrived (or
    /// the response ended), within 10 s; `during` runs once the response has started.
    pub async fn results(
        endpoint: &str,
        path: &str,
        body: &str,
        count: usize,
    ) -> anyhow::Result<(tokio::net::TcpStream, Vec<Value>, String)> {
        let mut stream = tokio::net::TcpStream::connect(endpoint).await?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = String::new();
        let mut found = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while found.len() < count {
            let mut buf = [0u8; 4096];
            let n = match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
                Ok(read) => read?,
                Err(_) => break,
            };
            if n == 0 {
                break;
            }
            raw.push_str(&String::from_utf8_lossy(&buf[..n]));
            found = raw
                .split('\n')
                .filter(|l| l.starts_with("{\"result\""))
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .map(|v| v["result"].clone())
                .collect();
        }
        Ok((stream, found, raw))
    }
}

async fn a_watch_streams_history_and_puts_made_over_grpc(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    c.put("w", "1", None).await?;
    let (_open, first, raw) = streams::results(
        &server.endpoint(),
        "/v3/watch",
        r#"{"create_request":{"key":"dw==","start_revision":"1"}}"#,
        2,
    )
    .await?;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(first.len(), 2, "{raw}");
    assert_eq!(first[0]["created"], true, "{raw}");
    assert_eq!(first[1]["events"][0]["kv"]["value"], "MQ==", "{raw}");
    assert!(
        first[1]["events"][0].get("type").is_none(),
        "a put has no type: {raw}"
    );
    // A second watch, then a delete made over gRPC reaches it.
    let endpoint = server.endpoint();
    let watching = tokio::spawn(async move {
        streams::results(
            &endpoint,
            "/v3beta/watch",
            r#"{"create_request":{"key":"dw=="}}"#,
            2,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.delete("w", None).await?;
    let (_open, events, raw) = watching.await??;
    assert_eq!(events.len(), 2, "{raw}");
    assert_eq!(events[1]["events"][0]["type"], "DELETE", "{raw}");
    Ok(())
}

async fn a_lease_is_kept_alive_and_a_snapshot_streams(server: &Server) -> anyhow::Result<()> {
    let granted = post_ok(server, "/v3/lease/grant", json!({"TTL": "60"})).await?;
    let id = granted["ID"].as_str().unwrap_or_default().to_string();
    let body = format!(r#"{{"ID":"{id}"}} {{"ID":"{id}"}}"#);
    let (_s, kept, raw) =
        streams::results(&server.endpoint(), "/v3/lease/keepalive", &body, 2).await?;
    assert_eq!(kept.len(), 2, "{raw}");
    assert_eq!(kept[0]["ID"], id.as_str(), "{raw}");
    assert_eq!(kept[1]["TTL"], "60", "{raw}");
    let (_s, chunks, raw) =
        streams::results(&server.endpoint(), "/v3/maintenance/snapshot", "{}", 1000).await?;
    assert!(!chunks.is_empty(), "{raw}");
    assert!(chunks.iter().all(|c| c["blob"].is_string()), "{raw}");
    Ok(())
}
