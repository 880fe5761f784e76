//! Writes the seed corpus (`fuzz/corpus/<target>/`): a few valid inputs per target, encoded with
//! roomcast's own encoders, so each fuzz run starts from frames the relay really exchanges.
//! Run from `fuzz/`: `cargo run --example seeds`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use roomcast::auth::{TokenAuth, unix_secs};
use roomcast::policy::{DestroyPolicy, GlobalPolicy, Moderation};
use roomcast::protocol::*;
use roomcast::store::{AttrRecord, RoomRecord, StoredMessage};
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus folder");
    std::fs::write(dir.join(name), bytes).expect("seed written");
}

fn message(class: Class) -> Message {
    Message {
        room: "lobby".into(),
        seq: 7,
        ts: 1_795_671_510_989,
        from: "bob".into(),
        msg_type: "chat".into(),
        body: Bytes::from_static(b"hello"),
        class,
    }
}

fn main() {
    let auth = TokenAuth::new(b"fuzz-secret", 30, false);
    let token = auth.mint("alice", unix_secs() + 3600).expect("token");
    let expired = auth.mint("alice", 1).expect("token");
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        token: token.clone(),
    };
    let requests = [
        Request::Join {
            room: "lobby".into(),
            history: 10,
        },
        Request::Leave {
            room: "lobby".into(),
        },
        Request::Send {
            room: "lobby".into(),
            msg_type: "chat".into(),
            body: Bytes::from_static(b"hello"),
            low: true,
        },
        Request::RoomInfo {
            room: "lobby".into(),
        },
        Request::Ping,
        Request::SetAttributes {
            room: "lobby".into(),
            entries: vec![("score".into(), "3:1".into())],
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
            seq: 7,
        },
        Request::History {
            room: "lobby".into(),
            before_seq: 0,
            limit: 20,
        },
    ];
    // The control stream: a hello and then every request, as one stream and one by one.
    let mut stream = encode_frame(&hello).to_vec();
    write("hello", "hello", &encode_frame(&hello)[4..]);
    write("hello", "expired", &encode_frame(&ClientFrame::Hello { version: 1, token: expired.clone() })[4..]);
    for (i, r) in requests.into_iter().enumerate() {
        let frame = encode_frame(&ClientFrame::Request { id: i as u32, request: r });
        write("control_frame", &format!("request-{i}"), &frame);
        stream.extend_from_slice(&frame);
    }
    write("control_frame", "session", &stream);

    let info = RoomInfo {
        id: "lobby".into(),
        name: "The Lobby".into(),
        epoch: 1,
        created_ms: 2,
        member_count: 1,
        members: vec!["alice".into()],
        mute_all: false,
    };
    let attribute = Attribute {
        key: "score".into(),
        value: "3:1".into(),
        owner: "host".into(),
        auto_delete: false,
        set_ms: 3,
    };
    let replies = [
        ServerFrame::Welcome {
            user: "alice".into(),
            conn_id: 1,
            max_frame: 65_536,
            max_event: 131_200,
        },
        ServerFrame::Refused(WireError::new(ErrorCode::Unauthorized, "token expired")),
        ServerFrame::Reply {
            id: 0,
            result: Ok(Response::Joined(JoinInfo {
                room: info.clone(),
                last_seq: 7,
                muted: false,
                history: vec![HistoryEntry {
                    message: message(Class::Normal),
                    recalled: false,
                }],
                attributes: vec![attribute.clone()],
                attr_version: 1,
            })),
        },
        ServerFrame::Reply {
            id: 1,
            result: Ok(Response::Sent { seq: 8, ts: 9 }),
        },
        ServerFrame::Reply {
            id: 2,
            result: Err(WireError::new(ErrorCode::RoomNotFound, "room \"x\" does not exist")),
        },
        ServerFrame::Reply {
            id: 3,
            result: Ok(Response::AttributeResults {
                version: 2,
                results: vec![("k".into(), None), ("j".into(), Some(WireError::new(ErrorCode::AttrNotOwner, "no")))],
            }),
        },
    ];
    for (i, r) in replies.iter().enumerate() {
        write("server_frame", &format!("frame-{i}"), &encode_frame(r));
    }

    let events = [
        Event::Ready { conn_id: 1 },
        Event::Message(message(Class::Normal)),
        Event::Gap {
            room: "lobby".into(),
            low: 3,
            normal: 1,
        },
        Event::RoomDestroyed {
            room: "lobby".into(),
            reason: DestroyReason::Idle,
        },
        Event::Kicked {
            room: "lobby".into(),
            reason: KickReason::Banned,
        },
        Event::Resumed {
            room: "lobby".into(),
            missed: 2,
            last_seq: 9,
        },
        Event::Banned {
            room: "lobby".into(),
            users: vec!["troll".into()],
            until_ms: 10,
        },
        Event::AttributeChanged {
            room: "lobby".into(),
            version: 4,
            attribute,
        },
        Event::AttributeRemoved {
            room: "lobby".into(),
            version: 5,
            key: "score".into(),
            auto: true,
        },
    ];
    let mut delivery = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let frame = encode_frame(e);
        write("event", &format!("event-{i}"), &frame);
        delivery.extend_from_slice(&frame);
    }
    write("event", "delivery", &delivery);
    let low = Event::Message(message(Class::Low));
    write("datagram", "low-message", &encode_datagram(&low));
    write("datagram", "gap", &encode_datagram(&events[2]));

    // Tokens: whole tokens, and header + "\n" + claims (the target signs those itself).
    write("token", "valid", token.as_bytes());
    write("token", "expired", expired.as_bytes());
    write("token", "dev", b"dev:alice");
    let claims = format!("{{\"sub\":\"alice\",\"exp\":{}}}", unix_secs() + 3600);
    write("token", "claims", format!("{{\"alg\":\"HS256\",\"typ\":\"JWT\"}}\n{claims}").as_bytes());
    write("token", "claims-nbf", format!("{{\"alg\":\"HS256\"}}\n{{\"sub\":\"a\",\"exp\":{},\"nbf\":1}}", unix_secs() + 60).as_bytes());
    let parts: Vec<&str> = token.split('.').collect();
    let header = URL_SAFE_NO_PAD.decode(parts[0]).expect("a JWT header");
    write("token", "header-none", &[&header[..], b"\n{\"sub\":\"a\"}"].concat());

    let room = RoomRecord {
        id: "lobby".into(),
        name: "The Lobby".into(),
        epoch: 1,
        created_ms: 2,
        policy: DestroyPolicy::lifetime(120),
        destroy_at_ms: Some(3),
        member_events: true,
        moderation: Moderation::default(),
        last_activity_ms: 4,
        seq_reserved: 10_000,
        attr_version: 5,
    };
    let stored = StoredMessage {
        seq: 7,
        ts: 8,
        from: "bob".into(),
        msg_type: "chat".into(),
        body: Bytes::from_static(b"hello"),
        class: Class::Normal,
        recalled: false,
    };
    let attr = AttrRecord {
        value: "3:1".into(),
        owner: "host".into(),
        auto_delete: true,
        set_ms: 9,
    };
    write("store_record", "room", &record(&room));
    write("store_record", "message", &record(&stored));
    write("store_record", "attribute", &record(&attr));
    write("store_record", "global", &record(&GlobalPolicy::default()));
    println!("seed corpus written under fuzz/corpus/");
}

/// Postcard bytes of a record, as the store keeps it (no frame prefix).
fn record<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("a record encodes")
}
