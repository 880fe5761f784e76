//! `/openapi.json` is as strict as the server: the limits it states are the ones the running relay
//! enforces (read from the document, then tried at the boundary against the server), every
//! operation documents the errors any request may get, and those errors (414 and 431 included)
//! come with the JSON error body.

mod common;

use common::*;
use serde_json::{Value, json};

/// The schema of property `prop` of component `schema`.
fn prop<'a>(doc: &'a Value, schema: &str, prop: &str) -> &'a Value {
    doc.pointer(&format!("/components/schemas/{schema}/properties/{prop}"))
        .unwrap_or_else(|| panic!("{schema}.{prop} is documented"))
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// The schema of parameter `name` of `method path`.
fn param<'a>(doc: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .map(|p| &p["schema"])
        .unwrap_or_else(|| panic!("{method} {path} has parameter {name}"))
}

async fn document(server: &TestServer) -> Value {
    let r = server
        .api_as(None, Method::GET, "/openapi.json", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_states_the_limits_of_the_running_configuration() {
    let server = TestServer::start(|c| {
        c.limits.member_page_max = 123;
        c.limits.member_check_max = 5;
        c.limits.rooms_per_send = 3;
        c.limits.rooms_per_destroy = 4;
        c.limits.admin_body = 1000;
        c.auth.max_token_ttl_secs = 7200;
    })
    .await;
    let doc = document(&server).await;
    assert_eq!(
        num(
            param(&doc, "/v1/rooms/{id}/members", "get", "limit"),
            "maximum"
        ),
        123
    );
    assert_eq!(num(prop(&doc, "CheckMembers", "user_ids"), "maxItems"), 5);
    assert_eq!(num(prop(&doc, "MultiMessage", "rooms"), "maxItems"), 3);
    assert_eq!(num(prop(&doc, "DestroyMany", "ids"), "maxItems"), 4);
    assert_eq!(num(prop(&doc, "RoomMessage", "body"), "maxLength"), 1000);
    assert_eq!(
        num(prop(&doc, "RoomMessage", "body_b64"), "maxLength"),
        1336
    );
    assert_eq!(num(prop(&doc, "TokenRequest", "ttl_secs"), "maximum"), 7200);

    // The server refuses one past each of them, and takes the limit itself.
    server.create_room("r").await;
    let check = |n: usize| {
        let ids: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
        json!({ "user_ids": ids })
    };
    let path = "/v1/rooms/r/members:check";
    let r = server.api(Method::POST, path, Some(check(5))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = server.api(Method::POST, path, Some(check(6))).await;
    r.assert_error(400, "BATCH_TOO_LARGE");
    let r = server
        .api(Method::GET, "/v1/rooms/r/members?limit=124", None)
        .await;
    r.assert_error(400, "BAD_REQUEST");
    let send = |len: usize| json!({ "type": "t", "body": "x".repeat(len) });
    let r = server
        .api(Method::POST, "/v1/rooms/r/messages", Some(send(1000)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = server
        .api(Method::POST, "/v1/rooms/r/messages", Some(send(1001)))
        .await;
    r.assert_error(413, "TOO_LARGE");
    let token = |ttl: u64| json!({ "user_id": "a", "ttl_secs": ttl });
    let r = server
        .api(Method::POST, "/v1/tokens", Some(token(7200)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = server
        .api(Method::POST, "/v1/tokens", Some(token(7201)))
        .await;
    r.assert_error(400, "BAD_REQUEST");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_string_and_number_limits_hold_at_the_boundary() {
    let server = TestServer::start(|_| {}).await;
    let doc = document(&server).await;

    // Room ids: the documented pattern and length, tried one past the end.
    let id = prop(&doc, "CreateRoom", "id");
    let max = num(id, "maxLength") as usize;
    let pattern = regex::Regex::new(id["pattern"].as_str().expect("pattern")).expect("regex");
    let longest = "a".repeat(max);
    assert!(pattern.is_match(&longest) && !pattern.is_match(&"a".repeat(max + 1)));
    let create = |id: &str| json!({ "id": id });
    let r = server
        .api(Method::POST, "/v1/rooms", Some(create(&longest)))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = server
        .api(
            Method::POST,
            "/v1/rooms",
            Some(create(&"a".repeat(max + 1))),
        )
        .await;
    r.assert_error(400, "BAD_REQUEST");
    let r = server
        .api(Method::POST, "/v1/rooms", Some(create("a b")))
        .await;
    r.assert_error(400, "BAD_REQUEST");

    // Ban minutes and the users of one call.
    let minutes = prop(&doc, "Moderate", "minutes");
    let (lo, hi) = (num(minutes, "minimum"), num(minutes, "maximum"));
    let users = num(prop(&doc, "Moderate", "user_ids"), "maxItems") as usize;
    let ban = |n: usize, minutes: u64| {
        let ids: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
        json!({ "user_ids": ids, "minutes": minutes })
    };
    let bans = format!("/v1/rooms/{longest}/bans");
    for (body, ok) in [
        (ban(users, hi), true),
        (ban(1, lo), true),
        (ban(users + 1, hi), false),
        (ban(1, hi + 1), false),
        (ban(1, lo - 1), false),
        (ban(0, hi), false),
    ] {
        let r = server.api(Method::POST, &bans, Some(body.clone())).await;
        if ok {
            assert_eq!(r.status, 200, "{body}: {}", r.text);
        } else {
            r.assert_error(400, "BAD_REQUEST");
        }
    }

    // The destroy policy's minutes depend on its type.
    let policy = &doc["components"]["schemas"]["DestroyPolicy"]["oneOf"];
    let idle = &policy[0]["properties"]["minutes"];
    let life = &policy[1]["properties"]["minutes"];
    let put = |kind: &str, minutes: u64| json!({ "type": kind, "minutes": minutes });
    let at = format!("/v1/rooms/{longest}/destroy-policy");
    for (body, ok) in [
        (put("idle", num(idle, "maximum")), true),
        (put("idle", num(idle, "maximum") + 1), false),
        (put("lifetime", num(life, "minimum")), true),
        (put("lifetime", num(life, "minimum") - 1), false),
        (put("lifetime", num(life, "maximum") + 1), false),
    ] {
        let r = server.api(Method::PUT, &at, Some(body.clone())).await;
        assert_eq!(r.status == 204, ok, "{body}: {} {}", r.status, r.text);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_kb_attribute_key_is_refused_everywhere_without_being_echoed() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("kv").await;
    let doc = document(&server).await;
    let entries = prop(&doc, "SetAttributes", "entries");
    assert_eq!(num(&entries["propertyNames"], "maxLength"), 128);

    let huge = "k".repeat(60 * 1024);
    let long = "k".repeat(129);
    let refused = async |method: Method, path: String, body: Option<Value>, status, code| {
        let r = server.api(method.clone(), &path, body).await;
        r.assert_error(status, code);
        // Whatever was refused is not echoed back.
        assert!(r.text.len() < 400, "{method}: {} bytes", r.text.len());
    };
    let attrs = "/v1/rooms/kv/attributes";
    let put = |key: &str, value: &str| Some(json!({ "owner": "host", "entries": { key: value } }));
    refused(
        Method::PUT,
        attrs.into(),
        put(&huge, "v"),
        400,
        "BAD_REQUEST",
    )
    .await;
    let del = Some(json!({ "keys": [huge.clone()] }));
    refused(
        Method::POST,
        format!("{attrs}:delete"),
        del,
        400,
        "BAD_REQUEST",
    )
    .await;
    // In a path or a query a key that long is a request target longer than the API reads.
    refused(
        Method::DELETE,
        format!("{attrs}/{huge}"),
        None,
        414,
        "TOO_LARGE",
    )
    .await;
    refused(
        Method::GET,
        format!("{attrs}?keys={huge}"),
        None,
        414,
        "TOO_LARGE",
    )
    .await;
    // Shorter, but still past 128 characters, or empty between commas: refused.
    for query in [long.as_str(), "a,,b", "a b"] {
        refused(
            Method::GET,
            format!("{attrs}?keys={query}"),
            None,
            400,
            "BAD_REQUEST",
        )
        .await;
    }
    refused(
        Method::DELETE,
        format!("{attrs}/{long}"),
        None,
        400,
        "BAD_REQUEST",
    )
    .await;
    // A value past 4096 bytes refuses the call too.
    refused(
        Method::PUT,
        attrs.into(),
        put("k", &"v".repeat(4097)),
        413,
        "TOO_LARGE",
    )
    .await;
    let r = server
        .api(Method::GET, "/v1/rooms/kv/attributes", None)
        .await;
    assert_eq!(r.json["attributes"], json!([]), "{}", r.text);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_documents_the_errors_any_request_may_get() {
    let server = TestServer::start(|_| {}).await;
    let doc = document(&server).await;
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().expect("operations") {
            let mut want = vec!["400", "414", "431"];
            if path.starts_with("/v1/") {
                want.extend(["401", "413", "429", "500"]);
                if method != "get" {
                    want.push("503");
                }
            }
            if path.starts_with("/v1/rooms/{id}") {
                want.push("404");
            }
            for status in want {
                let r = &op["responses"][status];
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ApiErrorBody",
                    "{method} {path} documents {status} with the error body"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 45, "{checked} operations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_targets_large_headers_and_wrong_methods_get_the_json_error_body() {
    let server = TestServer::start(|_| {}).await;
    let long = "c".repeat(roomcast::admin::MAX_TARGET);
    let r = server
        .api(Method::GET, &format!("/v1/rooms?cursor={long}"), None)
        .await;
    r.assert_error(414, "TOO_LARGE");
    // Without a key too: the open routes have the same limits.
    let r = server
        .api_as(None, Method::GET, &format!("/healthz?{long}"), None)
        .await;
    r.assert_error(414, "TOO_LARGE");

    let http = reqwest::Client::new();
    let big = "h".repeat(roomcast::admin::MAX_HEADER_BYTES);
    let resp = within(
        "a large header",
        http.get(server.admin_url("/v1/rooms"))
            .bearer_auth(ADMIN_KEY)
            .header("x-large", big)
            .send(),
    )
    .await
    .expect("an answer");
    assert_eq!(resp.status().as_u16(), 431);
    let body: Value = resp.json().await.expect("a JSON body");
    assert_eq!(body["error"], "TOO_LARGE", "{body}");
    let mut req = http.get(server.admin_url("/healthz"));
    for i in 0..=roomcast::admin::MAX_HEADERS {
        req = req.header(format!("x-h{i}"), "v");
    }
    let resp = within("many headers", req.send()).await.expect("an answer");
    assert_eq!(resp.status().as_u16(), 431);

    let r = server.api(Method::PATCH, "/v1/rooms", None).await;
    assert_eq!(r.status, 405, "{}", r.text);
    assert_eq!(r.json["error"], "BAD_REQUEST", "{}", r.text);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_states_the_cluster_fields_of_member_lists_and_destroys() {
    let server = TestServer::start(|_| {}).await;
    let doc = document(&server).await;
    for schema in ["MemberList", "MemberCheck"] {
        assert_eq!(prop(&doc, schema, "partial")["type"], "boolean", "{schema}");
        assert_eq!(
            prop(&doc, schema, "unanswered")["type"],
            "array",
            "{schema}"
        );
        let required = doc
            .pointer(&format!("/components/schemas/{schema}/required"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        assert!(
            !required.contains(&json!("partial")) && !required.contains(&json!("unanswered")),
            "{schema}: absent unless a relay did not answer"
        );
    }
    assert_eq!(prop(&doc, "Destroyed", "failed")["type"], "array");
    assert!(prop(&doc, "DestroyFailure", "error").is_object());
    assert_eq!(prop(&doc, "DestroyFailure", "id")["type"], "string");
}
