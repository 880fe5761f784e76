//! The browser SDK's postcard codec is checked against vectors the Rust encoder makes:
//! `tests/browser/vectors.json` holds, for frames of every type and variant the SDK uses, the
//! postcard bytes (hex) and serde's JSON of the value. This test proves the file is what the
//! Rust encoder produces now (run with `ROOMCAST_WRITE_VECTORS=1` to rewrite it after a protocol
//! change); `node --test tests/browser/codec.test.mjs` proves the SDK encodes and decodes the
//! same bytes to and from the same values.

use bytes::Bytes;
use roomcast::protocol::*;
use serde::Serialize;
use serde_json::{Value, json};

fn vector<T: Serialize>(kind: &str, value: &T) -> Value {
    let body = postcard::to_allocvec(value).expect("encodes");
    let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
    json!({"kind": kind, "hex": hex, "value": serde_json::to_value(value).expect("to json")})
}

fn message(class: Class, body: &'static [u8]) -> Message {
    Message {
        room: "lobby".into(),
        seq: 300,
        ts: 1_795_671_510_989,
        from: "bob".into(),
        msg_type: "chat".into(),
        body: Bytes::from_static(body),
        class,
    }
}

fn attribute() -> Attribute {
    Attribute {
        key: "score".into(),
        value: "3:1".into(),
        owner: "host".into(),
        auto_delete: true,
        set_ms: 1_795_671_510_000,
    }
}

fn room_info() -> RoomInfo {
    RoomInfo {
        id: "lobby".into(),
        name: "The lobby ☕".into(),
        epoch: u64::from(u32::MAX) + 7,
        created_ms: 1_795_000_000_000,
        member_count: 2,
        members: vec!["alice".into(), "bob".into()],
        mute_all: false,
    }
}

fn vectors() -> Vec<Value> {
    let mut v = Vec::new();
    let req = |id, request| ClientFrame::Request { id, request };
    v.push(vector(
        "ClientFrame",
        &ClientFrame::Hello {
            version: PROTOCOL_VERSION,
            token: "dev:alice".into(),
        },
    ));
    let requests = vec![
        Request::Join {
            room: "lobby".into(),
            history: -1,
        },
        Request::Join {
            room: "lobby".into(),
            history: 50,
        },
        Request::Leave {
            room: "lobby".into(),
        },
        Request::Send {
            room: "lobby".into(),
            msg_type: "chat".into(),
            body: Bytes::from_static("héllo".as_bytes()),
            low: true,
        },
        Request::RoomInfo {
            room: "lobby".into(),
        },
        Request::Ping,
        Request::SetAttributes {
            room: "lobby".into(),
            entries: vec![
                ("score".into(), "3:1".into()),
                ("map".into(), "de_dust".into()),
            ],
            auto_delete: true,
            force: false,
        },
        Request::DeleteAttributes {
            room: "lobby".into(),
            keys: vec!["score".into()],
            force: true,
        },
        Request::GetAttributes {
            room: "lobby".into(),
            keys: vec![],
        },
        Request::Recall {
            room: "lobby".into(),
            seq: 1 << 40,
        },
        Request::History {
            room: "lobby".into(),
            before_seq: 0,
            limit: 200,
        },
        Request::Resume {
            room: "lobby".into(),
            epoch: 1_795_671_510_989_000,
            last_seq: 300,
        },
    ];
    for (i, r) in requests.into_iter().enumerate() {
        v.push(vector("ClientFrame", &req(u32::MAX - i as u32, r)));
    }
    let err = WireError::new(ErrorCode::RoomNotFound, "no room \"x\"");
    v.push(vector(
        "ServerFrame",
        &ServerFrame::Welcome {
            user: "alice".into(),
            conn_id: 12_345_678_901,
            max_frame: DEFAULT_MAX_FRAME,
            max_event: 132_096,
        },
    ));
    v.push(vector(
        "ServerFrame",
        &ServerFrame::Refused(WireError::new(ErrorCode::Unauthorized, "token expired")),
    ));
    let responses = vec![
        Ok(Response::Joined(JoinInfo {
            room: room_info(),
            last_seq: 299,
            muted: true,
            history: vec![
                HistoryEntry {
                    message: message(Class::Normal, b"hi"),
                    recalled: false,
                },
                HistoryEntry {
                    message: message(Class::Protected, b""),
                    recalled: true,
                },
            ],
            attributes: vec![attribute()],
            attr_version: 4,
        })),
        Ok(Response::Left),
        Ok(Response::Sent {
            seq: 301,
            ts: 1_795_671_510_990,
        }),
        Ok(Response::Info(room_info())),
        Ok(Response::Pong),
        Ok(Response::AttributeResults {
            version: 5,
            results: vec![
                ("score".into(), None),
                (
                    "map".into(),
                    Some(WireError::new(ErrorCode::AttrNotOwner, "owned by carol")),
                ),
            ],
        }),
        Ok(Response::Attributes {
            version: 5,
            attributes: vec![attribute()],
        }),
        Ok(Response::Recalled),
        Ok(Response::History(vec![HistoryEntry {
            message: message(Class::Low, b"\xff\x00binary"),
            recalled: false,
        }])),
        Err(err.clone()),
        Err(WireError::new(ErrorCode::Internal, "")),
    ];
    for (i, result) in responses.into_iter().enumerate() {
        v.push(vector(
            "ServerFrame",
            &ServerFrame::Reply {
                id: 1 + i as u32 * 1000,
                result,
            },
        ));
    }
    let room = || "lobby".to_owned();
    let events = vec![
        Event::Ready { conn_id: 7 },
        Event::Message(message(Class::Low, "ünïcode".as_bytes())),
        Event::Message(message(Class::Normal, b"\x80\x81")),
        Event::Gap {
            room: room(),
            low: 3,
            normal: 128,
        },
        Event::RoomDestroyed {
            room: room(),
            reason: DestroyReason::Scheduled,
        },
        Event::Kicked {
            room: room(),
            reason: KickReason::OtherDevice,
        },
        Event::Resumed {
            room: room(),
            missed: 12,
            last_seq: 311,
        },
        Event::Muted {
            room: String::new(),
            users: vec!["troll".into()],
            until_ms: 1_795_671_999_000,
        },
        Event::Unmuted {
            room: room(),
            users: vec!["troll".into(), "x".into()],
        },
        Event::MuteAll { room: room() },
        Event::MuteAllLifted { room: room() },
        Event::Banned {
            room: room(),
            users: vec!["troll".into()],
            until_ms: 1,
        },
        Event::Unbanned {
            room: room(),
            users: vec![],
        },
        Event::MemberJoined {
            room: room(),
            user: "carol".into(),
        },
        Event::MemberLeft {
            room: room(),
            user: "carol".into(),
        },
        Event::MemberCount {
            room: room(),
            count: 100_000,
        },
        Event::Recalled {
            room: room(),
            seq: 300,
        },
        Event::AttributeChanged {
            room: room(),
            version: 6,
            attribute: attribute(),
        },
        Event::AttributeRemoved {
            room: room(),
            version: 7,
            key: "score".into(),
            auto: true,
        },
    ];
    for e in &events {
        v.push(vector("Event", e));
    }
    v
}

#[test]
fn the_committed_sdk_vectors_are_what_the_rust_encoder_produces() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/vectors.json");
    let mut text = serde_json::to_string_pretty(&vectors()).expect("serializes");
    text.push('\n');
    if std::env::var_os("ROOMCAST_WRITE_VECTORS").is_some() {
        std::fs::write(&path, &text).expect("writes the vectors");
    }
    let committed = std::fs::read_to_string(&path).expect("tests/browser/vectors.json exists");
    assert!(
        committed == text,
        "tests/browser/vectors.json is stale: rerun with ROOMCAST_WRITE_VECTORS=1 and check the SDK"
    );
}
