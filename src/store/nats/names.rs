//! Names in NATS: room ids encoded into subject tokens and KV keys, and the subjects, stream and
//! bucket names of one deployment (`cluster.prefix`).
//!
//! A room id may hold `.` (the subject separator), and characters NATS does not take in a
//! subject token or a KV key. [`encode`] keeps `A-Z a-z 0-9 - _` and writes every other byte
//! as `=` and two upper-case hex digits, so the result is a single token that is also a valid KV
//! key, and [`decode`] turns it back; distinct ids give distinct tokens.

/// Encodes a room id into one subject token / KV key part.
pub fn encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Decodes what [`encode`] made; `None` for anything it cannot have made.
pub fn decode(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' => {
                let hex = token.get(i + 1..i + 3)?;
                let b = u8::from_str_radix(hex, 16).ok()?;
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || hex != format!("{b:02X}")
                {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The names of one deployment.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

/// What a history subject holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryKind {
    /// Messages, in sequence order.
    Message,
    /// Recall markers: a recalled message without its body (the original is deleted).
    Recall,
}

impl Names {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// The history stream.
    pub fn history_stream(&self) -> String {
        format!("{}_history", self.prefix)
    }

    /// Every subject of the history stream.
    pub fn history_subjects(&self) -> String {
        format!("{}.hist.>", self.prefix)
    }

    /// A room's history subject of `kind`.
    pub fn history(&self, kind: HistoryKind, room: &str) -> String {
        let k = match kind {
            HistoryKind::Message => "m",
            HistoryKind::Recall => "x",
        };
        format!("{}.hist.{k}.{}", self.prefix, encode(room))
    }

    /// Both history subjects of a room (a purge filter).
    pub fn history_any(&self, room: &str) -> String {
        format!("{}.hist.*.{}", self.prefix, encode(room))
    }

    /// The room and kind of a history subject.
    pub fn parse_history(&self, subject: &str) -> Option<(HistoryKind, String)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".hist.")?;
        let (k, token) = rest.split_once('.')?;
        let kind = match k {
            "m" => HistoryKind::Message,
            "x" => HistoryKind::Recall,
            _ => return None,
        };
        Some((kind, decode(token)?))
    }

    /// The KV bucket of rooms and the app-wide lists.
    pub fn state_bucket(&self) -> String {
        format!("{}_state", self.prefix)
    }

    /// A room's key in the state bucket.
    pub fn room_key(&self, room: &str) -> String {
        format!("room.{}", encode(room))
    }

    /// The room a state-bucket key names, if it names one.
    pub fn parse_room_key(&self, key: &str) -> Option<String> {
        decode(key.strip_prefix("room.")?)
    }

    /// The key of the app-wide lists in the state bucket.
    pub const GLOBAL_KEY: &'static str = "global";

    /// The KV bucket of room leases (one owner per room).
    pub fn leases_bucket(&self) -> String {
        format!("{}_leases", self.prefix)
    }

    /// The KV bucket of member counts: each relay's count of each room.
    pub fn members_bucket(&self) -> String {
        format!("{}_members", self.prefix)
    }

    /// The key of `node`'s member count of `room` in the members bucket.
    pub fn members_key(&self, room: &str, node: &str) -> String {
        format!("{}.{node}", encode(room))
    }

    /// The room and node of a members-bucket key.
    pub fn parse_members_key(&self, key: &str) -> Option<(String, String)> {
        let (room, node) = key.split_once('.')?;
        Some((decode(room)?, node.to_owned()))
    }

    /// The core-NATS subject a room's owner publishes its accepted messages on.
    pub fn live(&self, room: &str) -> String {
        format!("{}.live.{}", self.prefix, encode(room))
    }

    /// The core-NATS subject of sends forwarded to a room's owner.
    pub fn forward(&self, room: &str) -> String {
        format!("{}.fwd.{}", self.prefix, encode(room))
    }

    /// The core-NATS subject on which relay `node` answers for its members of any room.
    pub fn node_members(&self, node: &str) -> String {
        format!("{}.members.{}", self.prefix, encode(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dots_and_wildcards_never_reach_a_subject() {
        assert_eq!(encode("lobby"), "lobby");
        assert_eq!(encode("eu.lobby"), "eu=2Elobby");
        assert_eq!(encode("a*b>c d=e"), "a=2Ab=3Ec=20d=3De");
        let n = Names::new("roomcast");
        assert_eq!(
            n.history(HistoryKind::Message, "eu.lobby"),
            "roomcast.hist.m.eu=2Elobby"
        );
        assert_eq!(
            n.parse_history("roomcast.hist.x.eu=2Elobby"),
            Some((HistoryKind::Recall, "eu.lobby".to_owned()))
        );
        assert_eq!(n.parse_history("roomcast.hist.q.lobby"), None);
        assert_eq!(n.live("eu.lobby"), "roomcast.live.eu=2Elobby");
        assert_eq!(n.forward("eu.lobby"), "roomcast.fwd.eu=2Elobby");
        assert_eq!(n.leases_bucket(), "roomcast_leases");
        assert_eq!(n.members_key("eu.lobby", "relay-a"), "eu=2Elobby.relay-a");
        assert_eq!(
            n.parse_members_key("eu=2Elobby.relay-a"),
            Some(("eu.lobby".to_owned(), "relay-a".to_owned()))
        );
        assert_eq!(
            n.parse_room_key("room.eu=2Elobby").as_deref(),
            Some("eu.lobby")
        );
        // Not made by encode: a kept character escaped, lower-case hex, a bare `=`.
        for bad in ["=61", "=2e", "a=", "a=2", "a.b"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn encode_round_trips_and_yields_one_token(id in "\\PC{0,40}") {
            let token = encode(&id);
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)));
            prop_assert_eq!(decode(&token), Some(id));
        }
    }
}
