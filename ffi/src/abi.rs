//! The exported functions. Every one catches panics, checks its pointers and strings, and
//! returns a status; the failure's message goes to `rc_last_error_message()`.
//!
//! A client handle is an opaque number shaped as a pointer: this library never dereferences it,
//! it looks it up in the registry of live clients, so a null, freed or made-up handle is
//! reported as `RC_INVALID_HANDLE` instead of being followed. Handles are never reused.

// The C ABI: raw pointers from the caller and `#[unsafe(no_mangle)]`. Each unsafe block says
// why it is sound; the contract each pointer must meet is in the function's doc.
#![allow(unsafe_code)]
// `rc_client` is the C name.
#![allow(non_camel_case_types)]

use crate::client::{Handle, Options};
use crate::event::{NO_EVENT, live_events, release, to_event};
use crate::status::{Failure, last_error_ptr, set_last_error, status_name};
use crate::types::*;
use bytes::Bytes;
use roomcast::client::ClientError;
use roomcast::protocol::{ErrorCode, Response, WireError};
use std::collections::HashMap;
use std::ffi::CStr;
use std::os::raw::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// A client (opaque). Made by `rc_client_open`, released by `rc_client_free`.
pub struct rc_client {
    _private: [u8; 0],
}

/// Defaults of `rc_config` (also what a 0 in a numeric field means).
const DEFAULT_EVENT_QUEUE: u32 = 8192;
const DEFAULT_MAX_REQUESTS: u32 = 256;
const DEFAULT_TIMEOUT_MS: u32 = 10_000;
/// Largest event queue and request window accepted (a larger value is a mistake, not a need).
const MAX_QUEUE: u32 = 1 << 22;
/// Bodies above this are refused before they are read (the relay's own limits are far lower;
/// this only keeps a wrong length from reading far past the caller's buffer).
const MAX_BODY: usize = 16 << 20;
/// Most keys one attribute call may pass (the relay allows 10; more is refused unread).
const MAX_KEYS: usize = 1000;

static CLIENTS: LazyLock<Mutex<HashMap<usize, Arc<Handle>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
static NEXT_CLIENT: AtomicUsize = AtomicUsize::new(1);

fn clients() -> std::sync::MutexGuard<'static, HashMap<usize, Arc<Handle>>> {
    CLIENTS.lock().unwrap_or_else(|p| p.into_inner())
}

fn lookup(client: *mut rc_client) -> Result<Arc<Handle>, Failure> {
    if client.is_null() {
        return Err(Failure::new(
            rc_status::RC_INVALID_HANDLE,
            "the client handle is null",
        ));
    }
    clients().get(&client.addr()).cloned().ok_or_else(|| {
        Failure::new(
            rc_status::RC_INVALID_HANDLE,
            "not a live client handle: freed, or not from rc_client_open",
        )
    })
}

/// Runs `f`, turning a failure into its status (and the thread's last error) and a panic into
/// `RC_PANIC`: nothing unwinds into the caller.
fn guard(f: impl FnOnce() -> Result<rc_status, Failure>) -> rc_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(status)) => status,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!(
                "internal error in roomcast (please report): {what}"
            ));
            rc_status::RC_PANIC
        }
    }
}

/// A required string argument.
///
/// # Safety
/// `p` is null or points to a 0-terminated string that stays valid during the call.
unsafe fn arg_str(p: *const c_char, what: &str) -> Result<String, Failure> {
    if p.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: non-null, and the caller guarantees a 0-terminated string for the call's duration.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(e) => Err(Failure::new(
            rc_status::RC_INVALID_UTF8,
            format!(
                "{what} is not valid UTF-8 (bad byte at offset {})",
                e.valid_up_to()
            ),
        )),
    }
}

/// An optional string argument (null: `None`).
///
/// # Safety
/// As [`arg_str`].
unsafe fn opt_str(p: *const c_char, what: &str) -> Result<Option<String>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's contract is the one `arg_str` needs.
    unsafe { arg_str(p, what) }.map(Some)
}

/// `count` string arguments from an array.
///
/// # Safety
/// `p` is null (only with `count` 0) or points to `count` pointers that each meet [`arg_str`]'s
/// contract.
unsafe fn arg_strs(
    p: *const *const c_char,
    count: usize,
    what: &str,
) -> Result<Vec<String>, Failure> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(Failure::null(what));
    }
    if count > MAX_KEYS {
        return Err(Failure::new(
            rc_status::RC_BATCH_TOO_LARGE,
            format!("{count} keys in one call; the relay takes at most 10"),
        ));
    }
    (0..count)
        .map(|i| {
            // SAFETY: `i < count` and the caller guarantees `count` readable pointers.
            let item = unsafe { p.add(i).read() };
            // SAFETY: each item meets `arg_str`'s contract.
            unsafe { arg_str(item, what) }
        })
        .collect()
}

/// Writes `value` to the optional out-pointer `out`.
///
/// # Safety
/// `out` is null or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: non-null, and the caller guarantees it is valid for writes.
        unsafe { out.write(value) };
    }
}

/// The ABI version this library implements (`RC_ABI_VERSION` in the header it was built with).
/// A binding checks it once: a different value means the header and the library disagree.
#[unsafe(no_mangle)]
pub extern "C" fn rc_abi_version() -> u32 {
    RC_ABI_VERSION
}

/// `sizeof(rc_event)` as this library lays it out, for bindings that declare it themselves.
#[unsafe(no_mangle)]
pub extern "C" fn rc_event_size() -> usize {
    std::mem::size_of::<rc_event>()
}

/// `sizeof(rc_config)` as this library lays it out, for bindings that declare it themselves.
#[unsafe(no_mangle)]
pub extern "C" fn rc_config_size() -> usize {
    std::mem::size_of::<rc_config>()
}

/// The message of the most recent call on this thread that failed (not `RC_OK`, not
/// `RC_EMPTY`); empty if none failed. Valid until the next failing call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn rc_last_error_message() -> *const c_char {
    last_error_ptr()
}

/// The stable name of a status (`"ROOM_NOT_FOUND"`, `"CLOSED"`, ...); `"UNKNOWN"` for a value
/// that is not one. Static: never freed.
#[unsafe(no_mangle)]
pub extern "C" fn rc_status_name(status: i32) -> *const c_char {
    match status_from(status) {
        Some(s) => status_name(s).as_ptr(),
        None => c"UNKNOWN".as_ptr(),
    }
}

/// The status with value `v`, if it is one.
pub(crate) fn status_from(v: i32) -> Option<rc_status> {
    use rc_status::*;
    const ALL: [rc_status; 32] = [
        RC_OK,
        RC_EMPTY,
        RC_BAD_REQUEST,
        RC_UNAUTHORIZED,
        RC_FORBIDDEN,
        RC_RATE_LIMITED,
        RC_TOO_LARGE,
        RC_ROOM_NOT_FOUND,
        RC_ROOM_EXISTS,
        RC_NOT_IN_ROOM,
        RC_BANNED,
        RC_MUTED,
        RC_TOO_MANY_ROOMS,
        RC_ATTR_LIMIT,
        RC_ATTR_NOT_OWNER,
        RC_ATTR_NOT_FOUND,
        RC_BATCH_TOO_LARGE,
        RC_MESSAGE_NOT_FOUND,
        RC_RECALL_FORBIDDEN,
        RC_SHED,
        RC_UNAVAILABLE,
        RC_INTERNAL,
        RC_INVALID_ARGUMENT,
        RC_INVALID_UTF8,
        RC_INVALID_HANDLE,
        RC_CLOSED,
        RC_BUSY,
        RC_TIMEOUT,
        RC_CONNECT,
        RC_TLS,
        RC_PROTOCOL,
        RC_PANIC,
    ];
    ALL.into_iter().find(|s| *s as i32 == v)
}

/// Events handed out by polls and not yet freed, over every client: 0 when an application has
/// freed all of its events.
#[unsafe(no_mangle)]
pub extern "C" fn rc_events_outstanding() -> usize {
    live_events()
}

/// Fills `config` with the defaults: no server, system roots, no token, datagrams on, an event
/// queue of 8192, 256 requests in flight, 10 s to connect and per request.
///
/// # Safety
/// `config` is null or valid for a write of `rc_config`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_config_init(config: *mut rc_config) -> rc_status {
    guard(|| {
        if config.is_null() {
            return Err(Failure::null("config"));
        }
        let defaults = rc_config {
            size: std::mem::size_of::<rc_config>() as u32,
            server: std::ptr::null(),
            server_name: std::ptr::null(),
            ca_pem: std::ptr::null(),
            token: std::ptr::null(),
            datagrams: true,
            event_queue: DEFAULT_EVENT_QUEUE,
            max_requests: DEFAULT_MAX_REQUESTS,
            connect_timeout_ms: DEFAULT_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_TIMEOUT_MS,
            reconnect_for_ms: 0,
        };
        // SAFETY: non-null, and the caller guarantees it is valid for writes.
        unsafe { config.write(defaults) };
        Ok(rc_status::RC_OK)
    })
}

/// Reads and checks a config.
///
/// # Safety
/// `config` is non-null and valid for reads of `rc_config`, with its strings meeting
/// [`arg_str`]'s contract.
unsafe fn read_config(config: *const rc_config) -> Result<Options, Failure> {
    // SAFETY: valid for reads (the caller's contract); `size` is read alone first, so a struct
    // of another layout is recognised before any other field is.
    let size = unsafe { std::ptr::addr_of!((*config).size).read() };
    if size as usize != std::mem::size_of::<rc_config>() {
        return Err(Failure::new(
            rc_status::RC_INVALID_ARGUMENT,
            format!(
                "rc_config.size is {size}, this library's rc_config has {} bytes: call rc_config_init, with the header of this library",
                std::mem::size_of::<rc_config>()
            ),
        ));
    }
    // SAFETY: as above; the bool is read as its byte so that any value the caller stored is
    // defined (non-zero is true).
    let datagrams = unsafe { std::ptr::addr_of!((*config).datagrams).cast::<u8>().read() } != 0;
    // SAFETY: valid for reads of `rc_config`; every other field is a pointer or a u32, for which
    // every bit pattern is valid.
    let c = unsafe {
        rc_config {
            datagrams,
            ..std::ptr::addr_of!(*config)
                .cast::<RawConfig>()
                .read()
                .into_config()
        }
    };
    // SAFETY: the strings meet `arg_str`'s contract (the caller's).
    let (server, server_name, ca_pem, token) = unsafe {
        (
            arg_str(c.server, "rc_config.server")?,
            opt_str(c.server_name, "rc_config.server_name")?,
            opt_str(c.ca_pem, "rc_config.ca_pem")?,
            arg_str(c.token, "rc_config.token")?,
        )
    };
    let servers: Vec<String> = server
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        return Err(Failure::new(
            rc_status::RC_INVALID_ARGUMENT,
            "rc_config.server names no address (expected \"host:port\", comma-separated)",
        ));
    }
    for s in &servers {
        let port_ok = s.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            return Err(Failure::new(
                rc_status::RC_INVALID_ARGUMENT,
                format!("rc_config.server: {s:?} is not \"host:port\""),
            ));
        }
    }
    let or_default = |v: u32, d: u32| if v == 0 { d } else { v };
    let event_queue = or_default(c.event_queue, DEFAULT_EVENT_QUEUE);
    let max_requests = or_default(c.max_requests, DEFAULT_MAX_REQUESTS);
    if event_queue > MAX_QUEUE || max_requests > MAX_QUEUE {
        return Err(Failure::new(
            rc_status::RC_INVALID_ARGUMENT,
            format!("rc_config.event_queue and max_requests are at most {MAX_QUEUE}"),
        ));
    }
    Ok(Options {
        servers,
        server_name,
        ca_pem: ca_pem.map(String::into_bytes),
        token,
        datagrams,
        event_queue: event_queue as usize,
        max_requests,
        connect_timeout: Duration::from_millis(
            or_default(c.connect_timeout_ms, DEFAULT_TIMEOUT_MS).into(),
        ),
        request_timeout: Duration::from_millis(
            or_default(c.request_timeout_ms, DEFAULT_TIMEOUT_MS).into(),
        ),
        reconnect_for: Duration::from_millis(c.reconnect_for_ms.into()),
    })
}

/// `rc_config` with its bool as a byte, so that reading a caller's struct is always defined.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawConfig {
    size: u32,
    server: *const c_char,
    server_name: *const c_char,
    ca_pem: *const c_char,
    token: *const c_char,
    datagrams: u8,
    event_queue: u32,
    max_requests: u32,
    connect_timeout_ms: u32,
    request_timeout_ms: u32,
    reconnect_for_ms: u32,
}

impl RawConfig {
    fn into_config(self) -> rc_config {
        rc_config {
            size: self.size,
            server: self.server,
            server_name: self.server_name,
            ca_pem: self.ca_pem,
            token: self.token,
            datagrams: self.datagrams != 0,
            event_queue: self.event_queue,
            max_requests: self.max_requests,
            connect_timeout_ms: self.connect_timeout_ms,
            request_timeout_ms: self.request_timeout_ms,
            reconnect_for_ms: self.reconnect_for_ms,
        }
    }
}

/// Starts a client: copies `config`, starts its runtime thread and begins connecting, and
/// returns at once. The first event is `RC_EVENT_CONNECTED`, or `RC_EVENT_CLOSED` with why
/// connecting failed. Requests may be made at once; they are sent when the connection is up.
///
/// # Safety
/// `config` is null or a valid `rc_config` whose strings are null or 0-terminated; `out` is
/// null or valid for a write of a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_client_open(
    config: *const rc_config,
    out: *mut *mut rc_client,
) -> rc_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: non-null and valid for writes (the caller's contract).
        unsafe { out.write(std::ptr::null_mut()) };
        if config.is_null() {
            return Err(Failure::null("config"));
        }
        // SAFETY: non-null; the caller guarantees a valid config with valid strings.
        let opts = unsafe { read_config(config) }?;
        let handle = Arc::new(Handle::open(opts)?);
        let id = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
        clients().insert(id, handle);
        // SAFETY: as above.
        unsafe { out.write(std::ptr::without_provenance_mut(id)) };
        Ok(rc_status::RC_OK)
    })
}

/// Hands `item` (if any) to the caller's event.
///
/// # Safety
/// `out` is valid for a write of `rc_event`.
unsafe fn deliver(
    result: Result<Option<crate::client::Item>, Failure>,
    out: *mut rc_event,
) -> Result<rc_status, Failure> {
    match result? {
        Some(item) => {
            // SAFETY: the caller's contract.
            unsafe { out.write(to_event(&item)) };
            Ok(rc_status::RC_OK)
        }
        None => Ok(rc_status::RC_EMPTY),
    }
}

/// Takes the next event without blocking: `RC_OK` with `*event` filled (free it with
/// `rc_event_free`), `RC_EMPTY` when there is none now, `RC_CLOSED` after `RC_EVENT_CLOSED` was
/// taken. Replies come before room events; `RC_EVENT_CLOSED` is always the last event.
///
/// # Safety
/// `event` is null or valid for a write of `rc_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_client_poll(client: *mut rc_client, event: *mut rc_event) -> rc_status {
    guard(|| {
        if event.is_null() {
            return Err(Failure::null("event"));
        }
        // SAFETY: non-null and valid for writes (the caller's contract).
        unsafe { event.write(NO_EVENT) };
        let handle = lookup(client)?;
        // SAFETY: as above.
        unsafe { deliver(handle.poll(), event) }
    })
}

/// Like `rc_client_poll`, but waits up to `timeout_ms` for an event (`RC_EMPTY` if none came).
/// For a thread of its own, or a loading screen; a frame loop polls.
///
/// # Safety
/// As `rc_client_poll`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_client_wait(
    client: *mut rc_client,
    event: *mut rc_event,
    timeout_ms: u32,
) -> rc_status {
    guard(|| {
        if event.is_null() {
            return Err(Failure::null("event"));
        }
        // SAFETY: non-null and valid for writes (the caller's contract).
        unsafe { event.write(NO_EVENT) };
        let handle = lookup(client)?;
        let result = handle.wait(Duration::from_millis(timeout_ms.into()));
        // SAFETY: as above.
        unsafe { deliver(result, event) }
    })
}

/// Releases an event's strings and arrays and resets `*event` to an empty `RC_EVENT_NONE`.
/// Events outlive their client. Freeing an event twice (or a copy of a freed one, or one a poll
/// did not fill) is `RC_INVALID_HANDLE`, never a double free.
///
/// # Safety
/// `event` is null or valid for reads and writes of `rc_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_event_free(event: *mut rc_event) -> rc_status {
    guard(|| {
        if event.is_null() {
            return Err(Failure::null("event"));
        }
        // SAFETY: valid for reads (the caller's contract); only the u64 handle is read, so the
        // rest of the struct may hold anything.
        let handle = unsafe { std::ptr::addr_of!((*event)._handle).read() };
        if !release(handle) {
            return Err(Failure::new(
                rc_status::RC_INVALID_HANDLE,
                "the event was already freed, or was not filled by rc_client_poll / rc_client_wait",
            ));
        }
        // SAFETY: valid for writes (the caller's contract).
        unsafe { event.write(NO_EVENT) };
        Ok(rc_status::RC_OK)
    })
}

/// Starts request `kind` about `room` on `client`; `op` gets the connected client and the room.
/// Returns the request's id.
fn start<F, Fut>(
    client: *mut rc_client,
    kind: rc_request_kind,
    room: String,
    op: F,
) -> Result<u64, Failure>
where
    F: FnOnce(Arc<roomcast::client::FailoverClient>, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Response, ClientError>> + Send + 'static,
{
    let about = room.clone();
    lookup(client)?.submit(kind, room, move |c| op(c, about))
}

/// Runs a request call: `*request_id` is 0 unless `f` started the request, then its id.
///
/// # Safety
/// `request_id` is null or valid for a write of `u64`.
unsafe fn request(request_id: *mut u64, f: impl FnOnce() -> Result<u64, Failure>) -> rc_status {
    // SAFETY: the caller's contract.
    unsafe { put(request_id, 0) };
    guard(|| {
        let id = f()?;
        // SAFETY: the caller's contract.
        unsafe { put(request_id, id) };
        Ok(rc_status::RC_OK)
    })
}

/// Joins `room`; `history`: -1 none, 0 the relay's default (10), up to 50 recent messages. The
/// reply (`RC_REQUEST_JOIN`) carries the room, the history, the attributes and `last_seq`.
///
/// Like every request: returns at once with its id in `*request_id` (which may be null); the
/// reply arrives as an `RC_EVENT_REPLY` with that id. The return value only says whether the
/// request was started (`RC_INVALID_*`, `RC_CLOSED`, `RC_BUSY`); the relay's answer, or
/// `RC_TIMEOUT`, is the reply's `status`.
///
/// # Safety
/// `room` is null or 0-terminated; `request_id` is null or valid for a write of `u64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_client_join(
    client: *mut rc_client,
    room: *const c_char,
    history: i32,
    request_id: *mut u64,
) -> rc_status {
    let run = || {
        // SAFETY: the caller's contract.
        let room = unsafe { arg_str(room, "room") }?;
        start(
            client,
            rc_request_kind::RC_REQUEST_JOIN,
            room,
            move |c, r| async move { c.join(&r, history).await.map(Response::Joined) },
        )
    };
    // SAFETY: `request_id` is null or writable (the caller's contract).
    unsafe { request(request_id, run) }
}

/// Leaves `room`. A request: see `rc_client_join`.
///
/// # Safety
/// As `rc_client_join`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_client_leave(
    client: *mut rc_client,
    room: *const c_char,
    request_id: *mut u64,
) -> rc_status {
    let run = || {
        // SAFETY: the caller's contract.
        let room = unsafe { arg_str(room, "room") }?;
        start(
            client,
            rc_request_kind::RC_REQUEST_LEAVE,
            room,
            move |c, r| async move { c.leave(&r).await.map(|()| Response::Left) },
        )
    };
    // SAFETY: `request_id` is null or writable (the caller's contract).
    unsafe { request(request_id, run) }
}

/// Sends `body_len` bytes of `body` as a message of type `msg_type` to `room` (`low`: ask for
/// the low-priority class: datagrams, shed first). The reply (`RC_REQUEST_SEND`) carries the
/// message's `seq` and `ts_ms`, or why it was refused (`RC_NOT_IN_ROOM`, `RC_MUTED`,
/// `RC_TOO_LARGE`, `RC_SHED`, ...). A request: see `rc_client_join`.
///
/// # Safety
/// `room` and `msg_type` are null or 0-terminated; `body` is null (only with `body_len` 0) or
/// valid for reads of `body_len` bytes; `request_id` as in `rc_client_join`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_client_send(
    client: *mut rc_client,
    room: *const c_char,
    msg_type: *const c_char,
    body: *const u8,
    body_len: usize,
    low: bool,
    request_id: *mut u64,
) -> rc_status {
    let run = || {
        // SAFETY: the caller's contract.
        let (room, msg_type) = unsafe { (arg_str(room, "room")?, arg_str(msg_type, "msg_type")?) };
        let body = if body_len == 0 {
            Bytes::new()
        } else if body.is_null() {
            return Err(Failure::null("body"));
        } else if body_len > MAX_BODY {
            return Err(Failure::new(
                rc_status::RC_TOO_LARGE,
                format!("a body of {body_len} bytes; the relay takes at most 16 KiB by default"),
            ));
        } else {
            // SAFETY: non-null, at most 16 MiB, and the caller guarantees `body_len` readable
            // bytes; they are copied before the call returns.
            Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(body, body_len) })
        };
        start(
            client,
            rc_request_kind::RC_REQUEST_SEND,
            room,
            move |c, r| async move {
                // The relay closes a connection that sends a frame over its limit: refuse such
                // a send here, and the connection lives on.
                let frame = send_frame_bound(&r, &msg_type, body.len());
                if frame > c.max_frame() as usize {
                    return Err(ClientError::Refused(WireError::new(
                        ErrorCode::TooLarge,
                        format!(
                            "a message of {} bytes makes a frame over the relay's limit of {} bytes; not sent",
                            body.len(),
                            c.max_frame()
                        ),
                    )));
                }
                c.send(&r, &msg_type, body, low)
                    .await
                    .map(|(seq, ts)| Response::Sent { seq, ts })
            },
        )
    };
    // SAFETY: `request_id` is null or writable (the caller's contract).
    unsafe { request(request_id, run) }
}

/// An upper bound of the encoded size of a send request's frame body (postcard: varint lengths,
/// the request id counted at its largest).
fn send_frame_bound(room: &str, msg_type: &str, body: usize) -> usize {
    let varint = |n: usize| (usize::BITS - n.max(1).leading_zeros()).div_ceil(7) as usize;
    let field = |n: usize| varint(n) + n;
    // frame variant + id + request variant + room + type + body + low
    1 + 5 + 1 + field(room.len()) + field(msg_type.len()) + field(body) + 1
}

/// Asks for `room`'s info (with up to 20 members). A request: see `rc_client_join`.
///
/// # Safety
/// As `rc_client_join`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_client_room_info(
    client: *mut rc_client,
    room: *const c_char,
    request_id: *mut u64,
) -> rc_status {
    let run = || {
        // SAFETY: the caller's contract.
        let room = unsafe { arg_str(room, "room") }?;
        start(
            client,
            rc_request_kind::RC_REQUEST_ROOM_INFO,
            room,
            move |c, r| async move { c.room_info(&r).await.map(Response::Info) },
        )
    };
    // SAFETY: `request_id` is null or writable (the caller's contract).
    unsafe { request(request_id, run) }
}

/// Sets `count` attributes of `room` (at most 10); `auto_delete`: remove them when this user
/// leaves; `force`: also keys owned by others. The reply has one result per key. A request:
/// see `rc_client_join`.
///
/// # Safety
/// `room` as in `rc_client_join`; `entries` is null (only with `count` 0) or points to `count`
/// entries whose strings are 0-terminated; `request_id` as in `rc_client_join`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_client_set_attributes(
    client: *mut rc_client,
    room: *const c_char,
    entries: *const rc_key_value,
    count: usize,
    auto_delete: bool,
    force: bool,
    request_id: *mut u64,
) -> rc_status {
    let run = || {
        // SAFETY: the caller's contract.
        let room = unsafe { arg_str(room, "room") }?;
        if count > 0 && entries.is_null() {
            return Err(Failure::null("entries"));
        }
        if count > MAX_KEYS {
            return Err(Failure::new(
                rc_status::RC_BATCH_TOO_LARGE,
                format!("{count} entries in one call; the relay takes at most 10"),
            ));
        }
        let mut pairs = Vec::with_capacity(count);
        for i in 0..count {
            // SAFETY: `i < count`, and the caller guarantees `count` readable entries.
            let e = unsafe { entries.add(i).read() };
            // SAFETY: each entry's strings are 0-terminated (the caller's contract).
            pairs.push(unsafe {
                (
                    arg_str(e.key, "entry key")?,
                    arg_str(e.value, "entry value")?,
                )
            });
        }
        start(
            client,
            rc_request_kind::RC_REQUEST_SET_ATTRIBUTES,
            room,
            move |c, r| async move {
                let refs: Vec<(&str, &str)> = pairs
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                c.set_attributes(&r, &refs, auto_delete, force)
                    .await
                    .map(|(version, results)| Response::AttributeResults { version, results })
            },
        )
    };
    // SAFETY: `request_id` is null or writable (the caller's contract).
    unsafe { request(request_id, run) }
}

/// Deletes `count` attributes of `room` (at most 10; `force`: also keys owned by others). The
/// reply has one result per key. A request: see `rc_client_join`.
///
/// # Safety
/// `room` as in `rc_client_join`; `keys` is null (only with `count` 0) or points to `count`
/// 0-terminated strings; `request_id` as in `rc_client_join`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_client_delete_attributes(
    client: *mut rc_client,
    room: *const c_char,
    keys: *const *const c_char,
    count: usize,
    force: bool,
    request_id: *mut u64,
) -> rc_status {
    let run = || {
        // SAFETY: the caller's contract.
        let (room, keys) = unsafe { (arg_str(room, "room")?, arg_strs(keys, count, "key")?) };
        start(
            client,
            rc_request_kind::RC_REQUEST_DELETE_ATTRIBUTES,
            room,
            move |c, r| async move {
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                c.delete_attributes(&r, &refs, force)
                    .await
                    .map(|(version, results)| Response::AttributeResults { version, results })
            },
        )
    };
    // SAFETY: `request_id` is null or writable (the caller's contract).
    unsafe { request(request_id, run) }
}

/// Reads attributes of `room`: the `count` keys given, or all when `count` is 0. A request:
/// see `rc_client_join`.
///
/// # Safety
/// As `rc_client_delete_attributes`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_client_get_attributes(
    client: *mut rc_client,
    room: *const c_char,
    keys: *const *const c_char,
    count: usize,
    request_id: *mut u64,
) -> rc_status {
    let run = || {
        // SAFETY: the caller's contract.
        let (room, keys) = unsafe { (arg_str(room, "room")?, arg_strs(keys, count, "key")?) };
        start(
            client,
            rc_request_kind::RC_REQUEST_GET_ATTRIBUTES,
            room,
            move |c, r| async move {
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                c.get_attributes(&r, &refs)
                    .await
                    .map(|(version, attributes)| Response::Attributes {
                        version,
                        attributes,
                    })
            },
        )
    };
    // SAFETY: `request_id` is null or writable (the caller's contract).
    unsafe { request(request_id, run) }
}

/// Recalls this user's message `seq` in `room` (within the relay's recall window). A request:
/// see `rc_client_join`.
///
/// # Safety
/// As `rc_client_join`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_client_recall(
    client: *mut rc_client,
    room: *const c_char,
    seq: u64,
    request_id: *mut u64,
) -> rc_status {
    let run = || {
        // SAFETY: the caller's contract.
        let room = unsafe { arg_str(room, "room") }?;
        start(
            client,
            rc_request_kind::RC_REQUEST_RECALL,
            room,
            move |c, r| async move { c.recall(&r, seq).await.map(|()| Response::Recalled) },
        )
    };
    // SAFETY: `request_id` is null or writable (the caller's contract).
    unsafe { request(request_id, run) }
}

/// A page of `room`'s history: up to `limit` (1–200) messages with `seq < before_seq`
/// (`before_seq` 0: the newest), oldest first. A request: see `rc_client_join`.
///
/// # Safety
/// As `rc_client_join`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_client_history(
    client: *mut rc_client,
    room: *const c_char,
    before_seq: u64,
    limit: u32,
    request_id: *mut u64,
) -> rc_status {
    let run = || {
        // SAFETY: the caller's contract.
        let room = unsafe { arg_str(room, "room") }?;
        let before = (before_seq != 0).then_some(before_seq);
        start(
            client,
            rc_request_kind::RC_REQUEST_HISTORY,
            room,
            move |c, r| async move { c.history(&r, before, limit).await.map(Response::History) },
        )
    };
    // SAFETY: `request_id` is null or writable (the caller's contract).
    unsafe { request(request_id, run) }
}

/// A round trip to the relay. A request: see `rc_client_join`.
///
/// # Safety
/// `request_id` is null or valid for a write of `u64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rc_client_ping(client: *mut rc_client, request_id: *mut u64) -> rc_status {
    let run = || {
        start(
            client,
            rc_request_kind::RC_REQUEST_PING,
            String::new(),
            |c, _| async move { c.ping().await.map(|()| Response::Pong) },
        )
    };
    // SAFETY: `request_id` is null or writable (the caller's contract).
    unsafe { request(request_id, run) }
}

/// Closes the connection (or stops connecting) and returns at once. Requests in flight are
/// answered `RC_CLOSED`; `RC_EVENT_CLOSED` (status `RC_OK`) follows as the last event. Closing
/// twice is `RC_CLOSED`. The handle stays valid until `rc_client_free`.
#[unsafe(no_mangle)]
pub extern "C" fn rc_client_close(client: *mut rc_client) -> rc_status {
    guard(|| {
        lookup(client)?.close()?;
        Ok(rc_status::RC_OK)
    })
}

/// Closes the client if it is open and releases it; the handle is invalid afterwards (any call
/// with it is `RC_INVALID_HANDLE`). Blocks at most about a second so that the close reaches the
/// server (typically a few round trips). Events already taken stay valid until freed.
#[unsafe(no_mangle)]
pub extern "C" fn rc_client_free(client: *mut rc_client) -> rc_status {
    guard(|| {
        lookup(client)?;
        let handle = clients().remove(&client.addr());
        // Dropped outside the registry lock: closing waits for the connection.
        drop(handle);
        Ok(rc_status::RC_OK)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast::protocol::{ClientFrame, Request, encode_frame};

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = guard(|| panic!("a bug"));
        assert_eq!(status, rc_status::RC_PANIC);
        // SAFETY: the last error is a valid C string until the next failure on this thread.
        let msg = unsafe { CStr::from_ptr(rc_last_error_message()) };
        assert!(msg.to_str().expect("UTF-8").contains("a bug"), "{msg:?}");
    }

    #[test]
    fn the_send_frame_bound_is_never_below_the_encoding() {
        for (room, body) in [
            ("r", 0usize),
            ("lobby", 127),
            ("lobby", 128),
            ("x", 16_384),
            ("y", 65_600),
        ] {
            let frame = encode_frame(&ClientFrame::Request {
                id: u32::MAX,
                request: Request::Send {
                    room: room.into(),
                    msg_type: "chat".into(),
                    body: Bytes::from(vec![0u8; body]),
                    low: true,
                },
            });
            let bound = send_frame_bound(room, "chat", body);
            assert!(
                bound >= frame.len() - 4,
                "{room} {body}: {bound} < {}",
                frame.len() - 4
            );
            assert!(
                bound <= frame.len() - 4 + 4,
                "{room} {body}: {bound} is loose"
            );
        }
    }
}
