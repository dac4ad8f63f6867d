//! The KV service's unary calls as raw HTTP/2 and gRPC frames, against `ferry store` and a
//! real etcd 3.4: a message split anywhere across DATA frames is taken whole, and a frame a
//! server must refuse is refused without changing anything. ferry answers these calls
//! without tonic's generic codec (`crates/store/src/server/unary_kv.rs`), so its refusals are
//! also held to tonic's codes and words, which every other ferry service answers with.

mod common;

use bytes::Bytes;
use common::Server;
use etcd_client::proto::{PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse};
use ferry_testkit::Kind;
use prost::Message;

against_both!(&[];
    a_message_split_across_frames_is_taken_whole,
    bad_framing_is_refused_and_changes_nothing,
);

/// A call's answer: its `grpc-status`, `grpc-message` and the message bytes (prefix
/// removed).
#[derive(Debug)]
struct Answer {
    status: String,
    message: String,
    body: Bytes,
}

fn framed(message: &impl Message) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    frame
}

/// Sends `chunks` as the DATA frames of one call to `path`, with `headers` added.
async fn call(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    chunks: Vec<Vec<u8>>,
) -> anyhow::Result<Answer> {
    let address = server.endpoint().trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&address).await?;
    let (send, connection) = h2::client::handshake(tcp).await?;
    let driver = tokio::spawn(connection);
    let mut send = send.ready().await?;
    let mut request = http::Request::post(format!("http://{address}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut stream) = send.send_request(request.body(())?, chunks.is_empty())?;
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.into_iter().enumerate() {
        stream.send_data(Bytes::from(chunk), i == last)?;
    }
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), response)
        .await
        .map_err(|_| anyhow::anyhow!("no answer to {path}"))??;
    let (head, mut body) = response.into_parts();
    let mut data = Vec::new();
    let mut ending = head.headers.clone();
    if !ending.contains_key("grpc-status") {
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        ending = body.trailers().await?.unwrap_or_default();
    }
    driver.abort();
    let field = |name: &str| {
        ending
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let body = if data.len() >= 5 {
        Bytes::from(data).slice(5..)
    } else {
        Bytes::new()
    };
    Ok(Answer {
        status: field("grpc-status"),
        message: field("grpc-message"),
        body,
    })
}

async fn range(server: &Server, key: &str) -> anyhow::Result<PbRangeResponse> {
    let request = PbRangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let answer = call(
        server,
        "/etcdserverpb.KV/Range",
        &[],
        vec![framed(&request)],
    )
    .await?;
    anyhow::ensure!(answer.status == "0", "range: {answer:?}");
    Ok(PbRangeResponse::decode(answer.body)?)
}

async fn a_message_split_across_frames_is_taken_whole(server: &Server) -> anyhow::Result<()> {
    let put = framed(&PbPutRequest {
        key: b"split".to_vec(),
        value: b"across three frames".to_vec(),
        ..Default::default()
    });
    // The first frame ends inside the prefix, the second inside the message.
    let chunks = vec![put[..3].to_vec(), put[3..9].to_vec(), put[9..].to_vec()];
    let answer = call(server, "/etcdserverpb.KV/Put", &[], chunks).await?;
    assert_eq!(answer.status, "0", "{answer:?}");
    let put = PbPutResponse::decode(answer.body)?;
    let revision = put.header.map_or(0, |h| h.revision);
    assert!(revision > 1, "put answered revision {revision}");
    let got = range(server, "split").await?;
    let values: Vec<&[u8]> = got.kvs.iter().map(|kv| kv.value.as_slice()).collect();
    assert_eq!(values, vec![b"across three frames".as_slice()]);
    assert_eq!(got.kvs[0].mod_revision, revision);
    Ok(())
}

async fn bad_framing_is_refused_and_changes_nothing(server: &Server) -> anyhow::Result<()> {
    let put = framed(&PbPutRequest {
        key: b"bad".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    let mut compressed = put.clone();
    compressed[0] = 1;
    let mut truncated = put.clone();
    truncated.truncate(put.len() - 1);
    let mut garbage = vec![0u8, 0, 0, 0, 3];
    garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
    // Each case: what is sent, and tonic's code and words (ferry's other services answer
    // with these; etcd's Go server has its own words, and for some cases its own code).
    let mut cases: Vec<(&str, Vec<Vec<u8>>, &str, &str)> = vec![
        (
            "a compressed message without grpc-encoding",
            vec![compressed],
            "13",
            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
        ),
        (
            "a message cut short",
            vec![truncated],
            "13",
            "Unexpected EOF decoding stream.",
        ),
        ("bytes that are not a PutRequest", vec![garbage], "13", ""),
    ];
    if server.kind() == Kind::Ferry {
        // etcd 3.4's Go server leaves a unary call without a message unanswered.
        cases.push(("no message", vec![], "13", "Missing request message."));
    }
    for (what, chunks, code, words) in cases {
        let answer = call(server, "/etcdserverpb.KV/Put", &[], chunks)
            .await
            .map_err(|e| e.context(what))?;
        assert_ne!(answer.status, "0", "{what}: accepted: {answer:?}");
        if server.kind() == Kind::Ferry {
            assert_eq!(answer.status, code, "{what}: {answer:?}");
            let decoded = common::percent_decoded(answer.message.as_bytes());
            assert!(decoded.starts_with(words), "{what}: {decoded:?}");
        }
    }
    // A message larger than the server takes: refused before it is read whole.
    let huge = framed(&PbPutRequest {
        key: b"bad".to_vec(),
        value: vec![b'x'; 3 * 1024 * 1024],
        ..Default::default()
    });
    let answer = call(server, "/etcdserverpb.KV/Put", &[], vec![huge]).await?;
    assert_ne!(answer.status, "0", "a 3 MiB put was accepted");
    if server.kind() == Kind::Ferry {
        assert_eq!(answer.status, "11", "{answer:?}");
    }
    // A compressed call is refused for the encoding this server does not take.
    let answer = call(
        server,
        "/etcdserverpb.KV/Put",
        &[("grpc-encoding", "snappy")],
        vec![put],
    )
    .await?;
    assert_eq!(answer.status, "12", "an unknown grpc-encoding: {answer:?}");
    assert!(range(server, "bad").await?.kvs.is_empty());
    Ok(())
}
