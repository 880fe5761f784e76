//! Member lists across relays: a room's members sit on several relays, and a listing or a
//! membership check made through any relay answers for all of them.
//!
//! Each relay answers for its own members on one core-NATS subject of its own,
//! `P.members.<node>` (one subscription per relay, not per room). A listing asks only the relays
//! whose member counts (`P_members`) say they have members of the room, all at once, each within
//! `cluster.request_timeout_ms`; a relay that does not answer is named in the answer (which is
//! then partial), never silently left out. The cost of a call is one request per relay with
//! members, and each relay's answer holds at most one page.
//!
//! Across relays the order is the join time (then the user id); a page ends where the join time
//! changes, so the cursor (the join time of a page's last member) resumes exactly after it.

use super::Cluster;
use crate::protocol::{ErrorCode, WireError};
use crate::server::Relay;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Weak;

/// A question to one relay about its members of a room.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Ask {
    /// Up to `limit` members past the join time `after`, in the order `desc` says.
    Page {
        room: String,
        desc: bool,
        after: Option<u64>,
        limit: usize,
    },
    /// Which of `users` are members there.
    Check { room: String, users: Vec<String> },
}

/// One relay's answer.
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Page(Page),
    Check(Vec<bool>),
    Refused(WireError),
}

/// One relay's members of a room past a cursor: the first `limit` in order, and every further
/// one that joined at the same millisecond as the last of them.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Page {
    /// `(user, joined_ms)` in order.
    members: Vec<(String, u64)>,
    /// Whether more follow.
    more: bool,
    /// The relay's members of the room.
    total: usize,
}

/// A page of a room's members on every relay.
#[derive(Debug, Default)]
pub struct ClusterPage {
    /// `(user, joined_ms)` in the asked order.
    pub members: Vec<(String, u64)>,
    /// Members of the room on the relays that answered.
    pub total: usize,
    /// The join time to pass as the next page's cursor; `None` on the last page.
    pub next: Option<u64>,
    /// Relays with members of the room that did not answer (their members are missing).
    pub unanswered: Vec<String>,
}

/// Membership of users on every relay.
#[derive(Debug, Default)]
pub struct ClusterCheck {
    /// One flag per asked user: a member on some relay.
    pub member: Vec<bool>,
    /// Relays with members of the room that did not answer (a `false` may be wrong for them).
    pub unanswered: Vec<String>,
}

/// The key members are ordered by.
fn key(desc: bool, joined: u64, user: &str) -> (u64, String) {
    let joined = if desc { u64::MAX - joined } else { joined };
    (joined, user.to_owned())
}

/// Whether a member who joined at `joined` comes after the cursor `after`.
fn past(desc: bool, after: Option<u64>, joined: u64) -> bool {
    match (after, desc) {
        (None, _) => true,
        (Some(a), false) => joined > a,
        (Some(a), true) => joined < a,
    }
}

/// The first `limit` of `members` past `after` in order, and those that joined at the same
/// millisecond as the last of them.
fn select(mut members: Vec<(String, u64)>, desc: bool, after: Option<u64>, limit: usize) -> Page {
    let total = members.len();
    members.retain(|(_, j)| past(desc, after, *j));
    members.sort_by_cached_key(|(u, j)| key(desc, *j, u));
    let mut end = members.len().min(limit);
    if let Some(last) = end.checked_sub(1).map(|i| members[i].1) {
        while end < members.len() && members[end].1 == last {
            end += 1;
        }
    }
    let more = end < members.len();
    members.truncate(end);
    Page {
        members,
        more,
        total,
    }
}

/// Merges the relays' pages into one page of at most `limit` members (more only when more
/// members joined at one millisecond), ending where the join time changes; the cursor of the
/// next page, if any.
fn merge(pages: Vec<Page>, desc: bool, limit: usize) -> (Vec<(String, u64)>, Option<u64>) {
    let more = pages.iter().any(|p| p.more);
    let mut all: Vec<(String, u64)> = pages.into_iter().flat_map(|p| p.members).collect();
    all.sort_by_cached_key(|(u, j)| key(desc, *j, u));
    // A user on two relays (two devices) is listed once, at the first of its joins in order.
    let mut seen = HashSet::new();
    all.retain(|(u, _)| seen.insert(u.clone()));
    let more = more || all.len() > limit;
    if all.len() > limit {
        let last = all[limit - 1].1;
        let end = if all[limit].1 != last {
            limit
        } else {
            // Cut before the millisecond that straddles the page, unless it fills the page:
            // every relay sent all of its members of that millisecond, so it is whole here.
            match all.iter().position(|(_, j)| *j == last) {
                Some(0) | None => all
                    .iter()
                    .rposition(|(_, j)| *j == last)
                    .map_or(limit, |i| i + 1),
                Some(first) => first,
            }
        };
        all.truncate(end);
    }
    let next = if more {
        all.last().map(|(_, j)| *j)
    } else {
        None
    };
    (all, next)
}

/// This relay's answer to `ask`.
fn answer_here(relay: &Relay, ask: Ask) -> Answer {
    let id = match &ask {
        Ask::Page { room, .. } | Ask::Check { room, .. } => room.clone(),
    };
    let room = match relay.room(&id) {
        Ok(r) => r,
        Err(e) => return Answer::Refused(e),
    };
    let members: Vec<(String, u64)> = {
        let core = relay.core();
        core.room(&room.id)
            .filter(|r| r.epoch == room.epoch)
            .map(|r| r.members().map(|(u, m)| (u.clone(), m.joined_ms)).collect())
            .unwrap_or_default()
    };
    match ask {
        Ask::Page {
            desc, after, limit, ..
        } => Answer::Page(select(members, desc, after, limit)),
        Ask::Check { users, .. } => {
            let here: HashSet<&str> = members.iter().map(|(u, _)| u.as_str()).collect();
            Answer::Check(users.iter().map(|u| here.contains(u.as_str())).collect())
        }
    }
}

/// Answers the other relays' questions about this relay's members, on `P.members.<node>`.
pub(super) async fn serve(cluster: Weak<Cluster>, relay: Weak<Relay>) {
    let (subject, client) = match cluster.upgrade() {
        Some(c) => {
            let (node, names, client, _) = c.parts();
            (names.node_members(node), client.clone())
        }
        None => return,
    };
    let mut sub = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(subject, error = %e, "cannot answer for this relay's members");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let Some(relay) = relay.upgrade() else {
            return;
        };
        let answer = match postcard::from_bytes::<Ask>(&msg.payload) {
            Ok(ask) => answer_here(&relay, ask),
            Err(e) => Answer::Refused(WireError::new(
                ErrorCode::BadRequest,
                format!("a malformed question about members: {e}"),
            )),
        };
        drop(relay);
        let bytes = Bytes::from(postcard::to_stdvec(&answer).unwrap_or_default());
        if let Err(e) = client.publish(reply, bytes).await {
            tracing::debug!(error = %e, "an answer about members was not sent");
        }
    }
}

/// Asks each other relay with members of `room` (all at once, each within the request
/// timeout); the answers, and the relays that did not give one.
async fn ask_all(cluster: &Cluster, room: &str, ask: &Ask) -> (Vec<Answer>, Vec<String>) {
    let (_, names, client, timeout) = cluster.parts();
    let Ok(payload) = postcard::to_stdvec(ask) else {
        return (Vec::new(), cluster.member_nodes(room));
    };
    let payload = Bytes::from(payload);
    let nodes = cluster.member_nodes(room);
    let asks = nodes.iter().map(|node| {
        let request = async_nats::Request::new()
            .payload(payload.clone())
            .timeout(Some(timeout));
        client.send_request(names.node_members(node), request)
    });
    let replies = futures_util::future::join_all(asks).await;
    let mut answers = Vec::new();
    let mut unanswered = Vec::new();
    for (node, reply) in nodes.into_iter().zip(replies) {
        match reply.map(|r| postcard::from_bytes::<Answer>(&r.payload)) {
            // A relay that does not know the room (yet) has no members of it.
            Ok(Ok(Answer::Refused(e))) if e.code == ErrorCode::RoomNotFound => {}
            Ok(Ok(Answer::Refused(e))) => {
                tracing::debug!(node, error = %e.message, "a relay refused to list its members");
                unanswered.push(node);
            }
            Ok(Ok(a)) => answers.push(a),
            Ok(Err(e)) => {
                tracing::debug!(node, error = %e, "an unreadable answer about members");
                unanswered.push(node);
            }
            Err(e) => {
                tracing::debug!(node, error = %e, "a relay did not answer about its members");
                unanswered.push(node);
            }
        }
    }
    unanswered.sort();
    (answers, unanswered)
}

/// A page of `room`'s members on every relay: up to `limit` (1..=`limits.member_page_max`)
/// past the join time `after`, oldest joins first unless `desc`.
pub async fn page(
    relay: &Relay,
    cluster: &Cluster,
    room: &str,
    desc: bool,
    after: Option<u64>,
    limit: usize,
) -> Result<ClusterPage, WireError> {
    let max = relay.config.limits.member_page_max;
    if limit == 0 || limit > max {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!("limit must be 1..={max}, got {limit}"),
        ));
    }
    let ask = Ask::Page {
        room: room.to_owned(),
        desc,
        after,
        limit,
    };
    let here = match answer_here(relay, ask.clone()) {
        Answer::Page(p) => p,
        Answer::Refused(e) => return Err(e),
        Answer::Check(_) => Page::default(),
    };
    let (answers, unanswered) = ask_all(cluster, room, &ask).await;
    let mut pages = vec![here];
    pages.extend(answers.into_iter().filter_map(|a| match a {
        Answer::Page(p) => Some(p),
        _ => None,
    }));
    let total = pages.iter().map(|p| p.total).sum();
    let (members, next) = merge(pages, desc, limit);
    Ok(ClusterPage {
        members,
        total,
        next,
        unanswered,
    })
}

/// Which of `users` (1..=`limits.member_check_max`) are members of `room` on some relay.
pub async fn check(
    relay: &Relay,
    cluster: &Cluster,
    room: &str,
    users: &[String],
) -> Result<ClusterCheck, WireError> {
    let mut member = relay.check_members(room, users)?;
    let ask = Ask::Check {
        room: room.to_owned(),
        users: users.to_vec(),
    };
    let (answers, unanswered) = ask_all(cluster, room, &ask).await;
    for answer in answers {
        if let Answer::Check(flags) = answer {
            for (m, there) in member.iter_mut().zip(flags) {
                *m |= there;
            }
        }
    }
    Ok(ClusterCheck { member, unanswered })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(members: &[(&str, u64)], more: bool) -> Page {
        Page {
            members: members.iter().map(|(u, j)| (u.to_string(), *j)).collect(),
            more,
            total: members.len(),
        }
    }

    fn users(m: &[(String, u64)]) -> Vec<&str> {
        m.iter().map(|(u, _)| u.as_str()).collect()
    }

    #[test]
    fn a_relays_page_holds_the_whole_millisecond_of_its_last_member() {
        let all: Vec<(String, u64)> = [("a", 1), ("b", 2), ("c", 2), ("d", 3)]
            .iter()
            .map(|(u, j)| (u.to_string(), *j))
            .collect();
        let p = select(all.clone(), false, None, 2);
        assert_eq!(users(&p.members), ["a", "b", "c"]);
        assert!(p.more);
        assert_eq!(p.total, 4);
        let p = select(all.clone(), false, Some(2), 2);
        assert_eq!(users(&p.members), ["d"]);
        assert!(!p.more);
        let p = select(all, true, Some(3), 1);
        assert_eq!(users(&p.members), ["b", "c"], "newest first, ties by user");
    }

    #[test]
    fn merged_pages_are_in_join_order_and_end_where_the_join_time_changes() {
        let (m, next) = merge(
            vec![
                page(&[("a", 1), ("c", 3)], true),
                page(&[("b", 2), ("d", 3)], false),
            ],
            false,
            3,
        );
        // The third member joined at 3 as the fourth did: the page ends before that time.
        assert_eq!(users(&m), ["a", "b"]);
        assert_eq!(next, Some(2));
        let (m, next) = merge(
            vec![page(&[("a", 1)], false), page(&[("b", 2)], false)],
            false,
            5,
        );
        assert_eq!(users(&m), ["a", "b"]);
        assert_eq!(next, None, "the last page");
        // One millisecond larger than the page: all of it, rather than no progress.
        let (m, next) = merge(
            vec![
                page(&[("a", 7), ("b", 7)], false),
                page(&[("c", 7), ("d", 8)], true),
            ],
            false,
            2,
        );
        assert_eq!(users(&m), ["a", "b", "c"]);
        assert_eq!(next, Some(7));
    }

    #[test]
    fn a_user_on_two_relays_is_listed_once() {
        let (m, next) = merge(
            vec![page(&[("a", 1), ("b", 4)], false), page(&[("a", 3)], false)],
            false,
            10,
        );
        assert_eq!(m, vec![("a".to_owned(), 1), ("b".to_owned(), 4)]);
        assert_eq!(next, None);
    }
}
