//! The OpenAPI document, as strict as the server.
//!
//! `utoipa` derives the document's shape from the handlers and their types ([`ApiDoc`], here,
//! over the three route files); this module then states every limit the server enforces, from
//! the same constants the checks use and from the running configuration (so a relay with
//! `limits.member_page_max = 200` documents 200):
//! - id, type and key strings: lengths and patterns; numbers: ranges; lists: item counts; request
//!   bodies: no unknown fields, and `body` or `body_b64`, exactly one;
//! - path and query parameters the same way;
//! - on every operation the errors any request may get, each with the JSON error body: 400, 414
//!   and 431 everywhere; 401, 413, 429 and 500 on every `/v1` route; 404 on every route of a room;
//!   503 on every route that writes (the store cannot write).
//!
//! A property or parameter named here that the derived document lacks is a mistake in this table;
//! [`document_checked`] reports it and a test keeps the list empty.

use super::{ApiErrorBody, data_routes, policy_routes, routes};
use crate::config::Config;
use crate::policy::{IDLE_MINUTES, LIFETIME_MINUTES, MAX_MINUTES, MAX_TYPES, MAX_USERS_PER_CALL};
use crate::protocol::ErrorCode;
use crate::server::data::{ADMIN_BATCH, HISTORY_PAGE, MAX_KEYS, MAX_VALUE};
use serde_json::{Value, json};
use utoipa::OpenApi;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every call that changes something may be refused with `503 UNAVAILABLE` while the store
/// cannot write: documented once here for every `POST`, `PUT` and `DELETE` under `/v1`.
struct UnavailableAddon;

impl utoipa::Modify for UnavailableAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let unavailable = ResponseBuilder::new()
            .description(
                "UNAVAILABLE: the store cannot write (e.g. its disk is full); nothing was changed. \
                 Retry later; /healthz tells when the store takes writes again.",
            )
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ApiErrorBody")))
                    .build(),
            )
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") || path == "/v1/tokens" {
                continue;
            }
            for op in [&mut item.post, &mut item.put, &mut item.delete]
                .into_iter()
                .flatten()
            {
                op.responses
                    .responses
                    .entry("503".to_owned())
                    .or_insert_with(|| unavailable.clone().into());
            }
        }
    }
}

/// The OpenAPI document of the admin API.
#[derive(OpenApi)]
#[openapi(
    info(title = "roomcast admin API", description = "Rooms, members, messages and tokens of a roomcast relay."),
    paths(routes::mint_token, routes::create_room, routes::list_rooms, routes::get_room,
          routes::destroy_room, routes::destroy_rooms, routes::list_members, routes::check_members,
          routes::send_room_message, routes::send_messages, routes::broadcast,
          routes::healthz, routes::render_metrics, routes::openapi_json,
          policy_routes::put_destroy_policy, policy_routes::put_destroy_at,
          policy_routes::delete_destroy_at, policy_routes::put_keepalive,
          policy_routes::delete_keepalive, policy_routes::get_keepalive,
          policy_routes::post_bans, policy_routes::delete_ban, policy_routes::get_bans,
          policy_routes::post_mutes, policy_routes::delete_mute, policy_routes::get_mutes,
          policy_routes::put_mute_all, policy_routes::delete_mute_all,
          policy_routes::post_mute_all_whitelist, policy_routes::delete_mute_all_whitelist,
          policy_routes::get_mute_all_whitelist, policy_routes::post_user_whitelist,
          policy_routes::delete_user_whitelist, policy_routes::get_user_whitelist,
          policy_routes::post_global_mutes, policy_routes::delete_global_mute,
          policy_routes::get_global_mutes, policy_routes::post_type_whitelist,
          policy_routes::delete_type_whitelist, policy_routes::get_type_whitelist,
          policy_routes::post_low_types, policy_routes::delete_low_type,
          policy_routes::get_low_types,
          data_routes::get_attributes, data_routes::put_attributes,
          data_routes::delete_attribute, data_routes::delete_attributes,
          data_routes::recall, data_routes::history),
    components(schemas(ApiErrorBody, ErrorCode, routes::Health)),
    modifiers(&SecurityAddon, &UnavailableAddon)
)]
pub struct ApiDoc;

/// Room and user ids: 1–64 characters of `[A-Za-z0-9_.:@-]`.
pub const ID_PATTERN: &str = "^[A-Za-z0-9_.:@-]{1,64}$";
/// Longest room or user id.
pub const ID_MAX: usize = 64;
/// Message types (admin sends may use the reserved `rc:` prefix): 1–32 id characters.
pub const TYPE_PATTERN: &str = "^[A-Za-z0-9_.:@-]{1,32}$";
/// Message types for the app-wide lists: 1–32 id characters, not starting with `rc:` (spelled
/// without look-ahead, so every JSON Schema tool can read it).
pub const LIST_TYPE_PATTERN: &str = "^(?:[A-Za-qs-z0-9_.:@-][A-Za-z0-9_.:@-]{0,31}|r(?:[A-Za-bd-z0-9_.:@-][A-Za-z0-9_.:@-]{0,30})?|rc(?:[A-Za-z0-9_.@-][A-Za-z0-9_.:@-]{0,29})?)$";
/// Longest message type.
pub const TYPE_MAX: usize = 32;
/// Attribute keys: 1–128 characters of `[A-Za-z0-9+=_-]`.
pub const KEY_PATTERN: &str = "^[A-Za-z0-9+=_-]{1,128}$";
/// Longest attribute key.
pub const KEY_MAX: usize = 128;

/// `?keys=`: up to [`MAX_KEYS`] attribute keys, comma-separated.
pub fn keys_pattern() -> String {
    let k = "[A-Za-z0-9+=_-]{1,128}";
    format!("^{k}(?:,{k}){{0,{}}}$", MAX_KEYS - 1)
}
/// Canonical padded base64.
pub const BASE64_PATTERN: &str = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";
/// Longest room name, bytes.
pub const NAME_MAX: usize = 256;
/// Largest page of `GET /v1/rooms`.
pub const ROOM_PAGE_MAX: usize = 500;
/// The latest time a room's destroy may be scheduled for: the end of the year 9999, in ms.
pub const LATEST_MS: u64 = 253_402_300_799_999;

/// The document `GET /openapi.json` serves for a relay running with `config`.
pub fn document(config: &Config) -> Value {
    document_checked(config).0
}

/// The document, and what the tables below name that the derived document lacks (empty unless
/// a handler or a type was renamed without this module).
pub fn document_checked(config: &Config) -> (Value, Vec<String>) {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    let mut missing = Vec::new();
    schemas(&mut doc, config, &mut missing);
    parameters(&mut doc, config, &mut missing);
    unsigned(&mut doc);
    responses(&mut doc);
    (doc, missing)
}

fn id() -> Value {
    json!({ "minLength": 1, "maxLength": ID_MAX, "pattern": ID_PATTERN })
}

fn msg_type() -> Value {
    json!({ "minLength": 1, "maxLength": TYPE_MAX, "pattern": TYPE_PATTERN })
}

fn list_type() -> Value {
    json!({ "minLength": 1, "maxLength": TYPE_MAX, "pattern": LIST_TYPE_PATTERN })
}

fn key() -> Value {
    json!({ "minLength": 1, "maxLength": KEY_MAX, "pattern": KEY_PATTERN })
}

fn range(min: u64, max: u64) -> Value {
    json!({ "minimum": min, "maximum": max })
}

/// A list of 1..=`max` items, each constrained by `item`.
fn list(max: usize, item: Value) -> Value {
    json!({ "minItems": 1, "maxItems": max, "items": item })
}

/// The longest base64 text of `bytes` bytes.
fn base64_len(bytes: usize) -> usize {
    bytes.div_ceil(3) * 4
}

/// Merges `add` into `target` (an object); nested objects (`items`) merge too.
fn merge(target: &mut Value, add: Value) {
    let (Some(t), Value::Object(add)) = (target.as_object_mut(), add) else {
        return;
    };
    for (k, v) in add {
        match t.get_mut(&k) {
            Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
            _ => {
                t.insert(k, v);
            }
        }
    }
}

/// Constrains property `prop` of component schema `schema`.
fn constrain(doc: &mut Value, schema: &str, prop: &str, add: Value, missing: &mut Vec<String>) {
    match doc
        .pointer_mut(&format!("/components/schemas/{schema}/properties/{prop}"))
        .filter(|p| p.is_object())
    {
        Some(p) => merge(p, add),
        None => missing.push(format!("{schema}.{prop}")),
    }
}

/// Sets keywords on component schema `schema` itself.
fn on_schema(doc: &mut Value, schema: &str, add: Value, missing: &mut Vec<String>) {
    match doc
        .pointer_mut(&format!("/components/schemas/{schema}"))
        .filter(|p| p.is_object())
    {
        Some(s) => merge(s, add),
        None => missing.push(schema.to_owned()),
    }
}

fn schemas(doc: &mut Value, config: &Config, missing: &mut Vec<String>) {
    let l = &config.limits;
    let users = || list(MAX_USERS_PER_CALL, id());
    let minutes = || range(1, u64::from(MAX_MINUTES));
    let body = json!({ "maxLength": l.admin_body });
    let body_b64 = json!({ "maxLength": base64_len(l.admin_body), "pattern": BASE64_PATTERN });
    let table: Vec<(&str, &str, Value)> = vec![
        ("TokenRequest", "user_id", id()),
        (
            "TokenRequest",
            "ttl_secs",
            range(1, config.auth.max_token_ttl_secs),
        ),
        ("CreateRoom", "id", id()),
        ("CreateRoom", "name", json!({ "maxLength": NAME_MAX })),
        (
            "CreateRoom",
            "mute_all_whitelist",
            json!({ "maxItems": MAX_USERS_PER_CALL, "items": id() }),
        ),
        ("DestroyMany", "ids", list(l.rooms_per_destroy, id())),
        ("CheckMembers", "user_ids", list(l.member_check_max, id())),
        ("RoomMessage", "from", id()),
        ("RoomMessage", "type", msg_type()),
        ("RoomMessage", "body", body.clone()),
        ("RoomMessage", "body_b64", body_b64.clone()),
        ("MultiMessage", "rooms", list(l.rooms_per_send, id())),
        ("MultiMessage", "from", id()),
        ("MultiMessage", "type", msg_type()),
        ("MultiMessage", "body", body.clone()),
        ("MultiMessage", "body_b64", body_b64.clone()),
        ("Broadcast", "from", id()),
        ("Broadcast", "type", msg_type()),
        ("Broadcast", "body", body),
        ("Broadcast", "body_b64", body_b64),
        ("SetAttributes", "owner", id()),
        (
            "SetAttributes",
            "entries",
            json!({
                "minProperties": 1,
                "maxProperties": ADMIN_BATCH,
                "propertyNames": key(),
                "additionalProperties": { "type": "string", "maxLength": MAX_VALUE },
            }),
        ),
        ("DeleteAttributes", "keys", list(ADMIN_BATCH, key())),
        ("DestroyAt", "at", range(1, LATEST_MS)),
        ("Moderate", "user_ids", users()),
        ("Moderate", "minutes", minutes()),
        ("UserIds", "user_ids", users()),
        ("GlobalMute", "user_ids", users()),
        ("GlobalMute", "minutes", minutes()),
        ("Types", "types", list(MAX_TYPES, list_type())),
    ];
    for (schema, prop, add) in table {
        constrain(doc, schema, prop, add, missing);
    }
    // Request bodies refuse unknown fields (serde's deny_unknown_fields).
    for schema in [
        "TokenRequest",
        "CreateRoom",
        "DestroyMany",
        "CheckMembers",
        "RoomMessage",
        "MultiMessage",
        "Broadcast",
        "SetAttributes",
        "DeleteAttributes",
        "DestroyAt",
        "Moderate",
        "UserIds",
        "GlobalMute",
        "Types",
    ] {
        on_schema(
            doc,
            schema,
            json!({ "additionalProperties": false }),
            missing,
        );
    }
    // A message has `body` or `body_b64` (a string, not null), exactly one.
    let one =
        |field: &str| json!({ "required": [field], "properties": { field: { "type": "string" } } });
    for schema in ["RoomMessage", "MultiMessage", "Broadcast"] {
        on_schema(
            doc,
            schema,
            json!({ "oneOf": [one("body"), one("body_b64")] }),
            missing,
        );
    }
    // The destroy policy's minutes depend on its type.
    let (idle, life) = (IDLE_MINUTES, LIFETIME_MINUTES);
    if let Some(s) = doc.pointer_mut("/components/schemas/DestroyPolicy") {
        *s = json!({
            "description": "How a room ends by itself: idle (no join, leave or message for \
                `minutes`; absent or null: the global `rooms.idle_destroy_minutes`) or a fixed \
                lifetime of `minutes` after creation.",
            "oneOf": [
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["type"],
                    "properties": {
                        "type": { "type": "string", "enum": ["idle"] },
                        "minutes": { "type": ["integer", "null"], "minimum": idle.0, "maximum": idle.1 },
                    },
                },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["type", "minutes"],
                    "properties": {
                        "type": { "type": "string", "enum": ["lifetime"] },
                        "minutes": { "type": "integer", "minimum": life.0, "maximum": life.1 },
                    },
                },
            ],
        });
    } else {
        missing.push("DestroyPolicy".into());
    }
}

/// The constraint of a path or query parameter, by name (and, for `limit`, by path).
fn parameter_schema(path: &str, name: &str, config: &Config) -> Option<Value> {
    Some(match name {
        "id" | "user" => id(),
        "key" => key(),
        "type" if path.starts_with("/v1/message-types/") => list_type(),
        "seq" => json!({ "minimum": 1 }),
        "keys" => json!({ "pattern": keys_pattern() }),
        "order" => json!({ "enum": ["asc", "desc"] }),
        "limit" if path == "/v1/rooms" => range(1, ROOM_PAGE_MAX as u64),
        "limit" if path.ends_with("/members") => range(1, config.limits.member_page_max as u64),
        "limit" if path.ends_with("/messages") => range(1, HISTORY_PAGE as u64),
        _ => return None,
    })
}

fn parameters(doc: &mut Value, config: &Config, missing: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        missing.push("paths".into());
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        for op in ops.values_mut() {
            let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                continue;
            };
            for p in params {
                let name = p["name"].as_str().unwrap_or_default().to_owned();
                // A query string cannot carry a null: an optional parameter is left out instead.
                if p["in"] == "query"
                    && let Some(types) = p["schema"]["type"].as_array()
                {
                    let types: Vec<Value> =
                        types.iter().filter(|t| *t != "null").cloned().collect();
                    if let [one] = types.as_slice() {
                        p["schema"]["type"] = one.clone();
                    }
                }
                if let Some(add) = parameter_schema(path, &name, config) {
                    seen.insert(name);
                    merge(&mut p["schema"], add);
                }
            }
        }
    }
    for name in ["id", "user", "key", "type", "seq", "keys", "order", "limit"] {
        if !seen.contains(name) {
            missing.push(format!("parameter {name}"));
        }
    }
}

/// `utoipa` writes `u64` as `format: int64` with `minimum: 0`, which tools read as "at most
/// `i64::MAX`"; the server takes any `u64`. Every such integer without its own maximum gets
/// `u64::MAX`.
fn unsigned(v: &mut Value) {
    match v {
        Value::Object(o) => {
            let u64_like = o.get("format").and_then(Value::as_str) == Some("int64")
                && o.get("minimum").and_then(Value::as_u64) == Some(0);
            if u64_like {
                o.insert("format".into(), json!("uint64"));
                o.entry("maximum").or_insert(json!(u64::MAX));
            }
            o.values_mut().for_each(unsigned);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned),
        _ => {}
    }
}

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ApiErrorBody" } } },
    })
}

fn responses(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in ops.iter_mut() {
            let keyed = op.get("security").is_some();
            let writes = keyed && method != "get";
            let room = path.starts_with("/v1/rooms/{id}");
            let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            let mut add = |status: &str, description: &str| {
                r.entry(status).or_insert_with(|| error(description));
            };
            add(
                "400",
                "BAD_REQUEST or BATCH_TOO_LARGE: a malformed request, or a value outside its \
                 documented range",
            );
            add(
                "414",
                "TOO_LARGE: the request target (path and query) is longer than the admin API reads",
            );
            add(
                "431",
                "TOO_LARGE: the request's headers are larger, or more, than the admin API reads",
            );
            if keyed {
                add("401", "UNAUTHORIZED: a missing or wrong admin key");
                add(
                    "413",
                    "TOO_LARGE: the request body is larger than limits.admin_request_body, or a \
                     message body larger than limits.admin_body",
                );
                add(
                    "429",
                    "RATE_LIMITED: more admin calls than limits.admin_rate_per_sec allows",
                );
                add("500", "INTERNAL: a fault inside the relay");
            }
            if room {
                add("404", "ROOM_NOT_FOUND: no room with that id");
            }
            if writes {
                add(
                    "503",
                    "UNAVAILABLE: the store cannot write now; nothing was changed",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_constraint_names_something_the_document_has() {
        let (_, missing) = document_checked(&Config::default());
        assert!(missing.is_empty(), "{missing:?}");
    }

    #[test]
    fn merge_keeps_what_it_does_not_set_and_merges_nested_objects() {
        let mut v = json!({ "type": "array", "items": { "type": "string" } });
        merge(&mut v, list(3, id()));
        assert_eq!(v["type"], "array");
        assert_eq!(v["items"]["type"], "string");
        assert_eq!(v["items"]["maxLength"], ID_MAX);
        assert_eq!(v["maxItems"], 3);
    }

    #[test]
    fn the_patterns_accept_exactly_what_the_server_accepts() {
        let re = |p: &str| regex::Regex::new(p).expect("the pattern compiles");
        let (ids, types, list_types, keys) = (
            re(ID_PATTERN),
            re(TYPE_PATTERN),
            re(LIST_TYPE_PATTERN),
            re(KEY_PATTERN),
        );
        let mut samples: Vec<String> = [
            "",
            "a",
            "r",
            "rc",
            "rc:",
            "rc:x",
            "rcx",
            "rc.",
            "r:",
            "Rc:x",
            "rcc:",
            "a b",
            "ü",
            "a/b",
            "a+b",
            "a=b",
            "a:b@c.d-e_f",
            "\n",
            "lobby\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [31, 32, 33, 63, 64, 65, 127, 128, 129, 60_000] {
            samples.push("k".repeat(n));
            samples.push(format!("rc:{}", "k".repeat(n)));
        }
        let keys_list = re(&keys_pattern());
        let many = |n: usize| vec!["k"; n].join(",");
        assert!(keys_list.is_match(&many(MAX_KEYS)) && !keys_list.is_match(&many(MAX_KEYS + 1)));
        assert!(
            keys_list.is_match("a,b") && !keys_list.is_match("a,,b") && !keys_list.is_match("")
        );
        for s in &samples {
            let s = s.as_str();
            let id_ok = crate::room::validate_id("id", s).is_ok();
            assert_eq!(ids.is_match(s), id_ok, "id {s:?}");
            let type_ok = id_ok && s.len() <= TYPE_MAX;
            assert_eq!(types.is_match(s), type_ok, "admin type {s:?}");
            let list_ok = crate::room::validate_msg_type(s).is_ok();
            assert_eq!(list_types.is_match(s), list_ok, "list type {s:?}");
            let key_ok = crate::server::data::validate_key(s).is_ok();
            assert_eq!(keys.is_match(s), key_ok, "key {s:?}");
        }
    }
}
