//! Room policy as pure decisions: who may send, which class a message gets, whether a budget admits
//! it, and when a timer fires. Every function takes `now` (ms since the Unix epoch) as an argument
//! and does no I/O, so the edge cases are tested with plain `#[test]`s.

use crate::protocol::{Class, DestroyReason, ErrorCode, WireError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Longest ban or mute, in minutes (30 days).
pub const MAX_MINUTES: u32 = 43_200;
/// Most users in one moderation call, and in each per-room whitelist.
pub const MAX_USERS_PER_CALL: usize = 20;
/// Most entries in each app-wide message-type list.
pub const MAX_TYPES: usize = 20;
/// Idle-destroy range, minutes (1 min to 24 h).
pub const IDLE_MINUTES: (u32, u32) = (1, 1440);
/// Fixed-lifetime range, minutes (1 h to 7 days).
pub const LIFETIME_MINUTES: (u32, u32) = (60, 10_080);

fn bad(msg: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::BadRequest, msg)
}

/// Checks a ban or mute duration: 1..=43200 minutes.
pub fn check_minutes(minutes: u32) -> Result<u64, WireError> {
    if minutes == 0 || minutes > MAX_MINUTES {
        return Err(bad(format!(
            "minutes must be 1..={MAX_MINUTES}, got {minutes}"
        )));
    }
    Ok(u64::from(minutes) * 60_000)
}

/// Checks the user list of a moderation call: 1..=20 valid ids.
pub fn check_users(users: &[String]) -> Result<(), WireError> {
    if users.is_empty() || users.len() > MAX_USERS_PER_CALL {
        return Err(bad(format!(
            "user_ids must hold 1..={MAX_USERS_PER_CALL} users per call, got {}",
            users.len()
        )));
    }
    for u in users {
        crate::protocol::validate_id("user id", u)?;
    }
    Ok(())
}

/// The kind of automatic end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// After `minutes` without a join, leave or message.
    Idle,
    /// `minutes` after creation.
    Lifetime,
}

/// How a room is destroyed automatically. JSON: `{"type": "idle", "minutes": 30}` (minutes
/// 1..=1440, or absent/null for the global `idle_destroy_minutes`) or
/// `{"type": "lifetime", "minutes": 120}` (60..=10080).
///
/// A plain struct rather than a tagged enum so that it encodes the same way in JSON and in the
/// store's postcard records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestroyPolicy {
    /// `idle` or `lifetime`.
    #[serde(rename = "type")]
    pub kind: PolicyKind,
    /// Minutes; for `idle`, absent means the global default.
    #[serde(default)]
    pub minutes: Option<u32>,
}

impl Default for DestroyPolicy {
    fn default() -> Self {
        DestroyPolicy::idle(None)
    }
}

impl DestroyPolicy {
    /// The idle policy (`None`: the global idle time).
    pub fn idle(minutes: Option<u32>) -> Self {
        DestroyPolicy {
            kind: PolicyKind::Idle,
            minutes,
        }
    }

    /// The fixed-lifetime policy.
    pub fn lifetime(minutes: u32) -> Self {
        DestroyPolicy {
            kind: PolicyKind::Lifetime,
            minutes: Some(minutes),
        }
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), WireError> {
        let (name, (lo, hi)) = match (self.kind, self.minutes) {
            (PolicyKind::Idle, None) => return Ok(()),
            (PolicyKind::Lifetime, None) => {
                return Err(bad(format!(
                    "a lifetime policy needs minutes ({}..={})",
                    LIFETIME_MINUTES.0, LIFETIME_MINUTES.1
                )));
            }
            (PolicyKind::Idle, Some(_)) => ("idle", IDLE_MINUTES),
            (PolicyKind::Lifetime, Some(_)) => ("lifetime", LIFETIME_MINUTES),
        };
        let m = self.minutes.unwrap_or_default();
        if (lo..=hi).contains(&m) {
            Ok(())
        } else {
            Err(bad(format!("{name} minutes must be {lo}..={hi}, got {m}")))
        }
    }
}

/// What decides a room's automatic end.
#[derive(Debug, Clone, Copy)]
pub struct Lifecycle {
    /// The room's policy.
    pub policy: DestroyPolicy,
    /// Creation time.
    pub created_ms: u64,
    /// Last join, leave or client message.
    pub last_activity_ms: u64,
    /// Scheduled destroy time, if any.
    pub destroy_at_ms: Option<u64>,
    /// On the keepalive list.
    pub keepalive: bool,
}

/// Whether a room is due for destruction at `now`, and why. A scheduled time applies even to a
/// keepalive room (it was asked for explicitly); idle and lifetime ends do not.
pub fn destroy_due(l: &Lifecycle, global_idle_ms: u64, now: u64) -> Option<DestroyReason> {
    if l.destroy_at_ms.is_some_and(|at| now >= at) {
        return Some(DestroyReason::Scheduled);
    }
    if l.keepalive {
        return None;
    }
    let minutes_ms = l.policy.minutes.map(|m| u64::from(m) * 60_000);
    match l.policy.kind {
        PolicyKind::Idle => {
            let idle = minutes_ms.unwrap_or(global_idle_ms);
            (now >= l.last_activity_ms.saturating_add(idle)).then_some(DestroyReason::Idle)
        }
        PolicyKind::Lifetime => (now >= l.created_ms.saturating_add(minutes_ms.unwrap_or(0)))
            .then_some(DestroyReason::Lifetime),
    }
}

/// Whether a member offline since `offline_since` is due for removal at `now`.
pub fn offline_due(offline_since: u64, grace_ms: u64, whitelisted: bool, now: u64) -> bool {
    !whitelisted && now >= offline_since.saturating_add(grace_ms)
}

/// A room's moderation lists. Times are expiry instants in ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Moderation {
    /// Banned users and when the ban ends.
    pub bans: BTreeMap<String, u64>,
    /// Muted members and when the mute ends.
    pub mutes: BTreeMap<String, u64>,
    /// Mute-all on.
    pub mute_all: bool,
    /// May send during mute-all, and despite a member mute.
    pub mute_all_whitelist: BTreeSet<String>,
    /// Protected from shedding, never removed when offline.
    pub user_whitelist: BTreeSet<String>,
}

impl Moderation {
    /// Whether `user` is banned at `now`; the ban's end if so.
    pub fn banned_until(&self, user: &str, now: u64) -> Option<u64> {
        self.bans.get(user).copied().filter(|&until| now < until)
    }

    /// Whether `user` is muted in this room at `now` (member mute only).
    pub fn muted_until(&self, user: &str, now: u64) -> Option<u64> {
        self.mutes.get(user).copied().filter(|&until| now < until)
    }

    /// Drops expired bans and mutes; returns whether anything changed.
    pub fn expire(&mut self, now: u64) -> bool {
        let before = self.bans.len() + self.mutes.len();
        self.bans.retain(|_, until| now < *until);
        self.mutes.retain(|_, until| now < *until);
        before != self.bans.len() + self.mutes.len()
    }
}

/// App-wide lists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GlobalPolicy {
    /// Users who may not send anywhere, and until when.
    pub global_mutes: BTreeMap<String, u64>,
    /// Message types that are always protected.
    pub type_whitelist: BTreeSet<String>,
    /// Message types that are always low priority.
    pub low_types: BTreeSet<String>,
    /// Rooms never auto-destroyed.
    pub keepalive: BTreeSet<String>,
}

impl GlobalPolicy {
    /// Whether `user` is globally muted at `now`.
    pub fn globally_muted_until(&self, user: &str, now: u64) -> Option<u64> {
        self.global_mutes.get(user).copied().filter(|&u| now < u)
    }
}

/// The send check, in the order of the specification: global mute → refuse; mute-all whitelist →
/// allow; mute-all or a member mute → refuse.
pub fn check_send(
    user: &str,
    room: &Moderation,
    global: &GlobalPolicy,
    now: u64,
) -> Result<(), WireError> {
    if let Some(until) = global.globally_muted_until(user, now) {
        return Err(WireError::new(
            ErrorCode::Muted,
            format!(
                "user {user:?} is globally muted until {} ({until} ms since the epoch)",
                crate::protocol::utc_text(until)
            ),
        ));
    }
    if room.mute_all_whitelist.contains(user) {
        return Ok(());
    }
    if room.mute_all {
        return Err(WireError::new(
            ErrorCode::Muted,
            "the room is muted (mute-all)",
        ));
    }
    if let Some(until) = room.muted_until(user, now) {
        return Err(WireError::new(
            ErrorCode::Muted,
            format!(
                "user {user:?} is muted in this room until {} ({until} ms since the epoch)",
                crate::protocol::utc_text(until)
            ),
        ));
    }
    Ok(())
}

/// The class of a client or admin message. Protected wins over low: a whitelisted user's or a
/// whitelisted type's message is protected even when marked low.
pub fn classify(
    sender: Option<&str>,
    msg_type: &str,
    low_flag: bool,
    room: &Moderation,
    global: &GlobalPolicy,
) -> Class {
    match sender {
        None => Class::Protected,
        Some(u) if room.user_whitelist.contains(u) => Class::Protected,
        Some(_) if global.type_whitelist.contains(msg_type) => Class::Protected,
        Some(_) if low_flag || global.low_types.contains(msg_type) => Class::Low,
        Some(_) => Class::Normal,
    }
}

/// Egress shedding: whether a member `lag` entries behind its room's ring tail (of `capacity`
/// slots) skips a message of `class`. Low goes once the member is a quarter of the ring behind,
/// normal at half; protected never (a member that cannot take those is closed as too slow).
pub fn shed_on_egress(class: Class, lag: u64, capacity: u64) -> bool {
    match class {
        Class::Low => lag > capacity / 4,
        Class::Normal => lag > capacity / 2,
        Class::Protected => false,
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: u32, burst: u32, now: u64) -> Self {
        TokenBucket {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last_ms: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Settings of a room's ingress budget, per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetConfig {
    /// Window length, ms.
    pub window_ms: u64,
    /// Messages of any class per window.
    pub total: u32,
    /// Part of `total` that low-priority messages may not use.
    pub reserved: u32,
    /// Extra messages per window that only protected ones may use.
    pub protected_extra: u32,
}

/// A room's ingress budget over fixed windows: low may fill `total - reserved`, normal `total`,
/// protected `total + protected_extra`, each counting everything admitted in the window.
#[derive(Debug, Clone)]
pub struct IngressBudget {
    cfg: BudgetConfig,
    window_start: u64,
    used: u32,
}

impl IngressBudget {
    /// A fresh budget.
    pub fn new(cfg: BudgetConfig) -> Self {
        IngressBudget {
            cfg,
            window_start: 0,
            used: 0,
        }
    }

    /// Admits one message of `class` at `now`, or refuses it.
    pub fn admit(&mut self, class: Class, now: u64) -> bool {
        if now >= self.window_start.saturating_add(self.cfg.window_ms) {
            self.window_start = now;
            self.used = 0;
        }
        let cap = match class {
            Class::Low => self.cfg.total.saturating_sub(self.cfg.reserved),
            Class::Normal => self.cfg.total,
            Class::Protected => self.cfg.total.saturating_add(self.cfg.protected_extra),
        };
        if self.used < cap {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn life(policy: DestroyPolicy) -> Lifecycle {
        Lifecycle {
            policy,
            created_ms: 0,
            last_activity_ms: 0,
            destroy_at_ms: None,
            keepalive: false,
        }
    }

    #[test]
    fn idle_destroy_fires_exactly_at_the_boundary() {
        let l = life(DestroyPolicy::idle(Some(5)));
        assert_eq!(destroy_due(&l, 60 * MIN, 5 * MIN - 1), None);
        assert_eq!(
            destroy_due(&l, 60 * MIN, 5 * MIN),
            Some(DestroyReason::Idle)
        );
        let global = life(DestroyPolicy::idle(None));
        assert_eq!(destroy_due(&global, 60 * MIN, 59 * MIN), None);
        assert_eq!(
            destroy_due(&global, 60 * MIN, 60 * MIN),
            Some(DestroyReason::Idle)
        );
    }

    #[test]
    fn activity_pushes_idle_destroy_back() {
        let mut l = life(DestroyPolicy::idle(Some(5)));
        l.last_activity_ms = 4 * MIN;
        assert_eq!(destroy_due(&l, 0, 8 * MIN), None);
        assert_eq!(destroy_due(&l, 0, 9 * MIN), Some(DestroyReason::Idle));
    }

    #[test]
    fn lifetime_ignores_activity() {
        let mut l = life(DestroyPolicy::lifetime(60));
        l.last_activity_ms = 59 * MIN;
        assert_eq!(destroy_due(&l, 0, 60 * MIN - 1), None);
        assert_eq!(destroy_due(&l, 0, 60 * MIN), Some(DestroyReason::Lifetime));
    }

    #[test]
    fn a_long_idle_lifetime_room_switched_to_idle_goes_at_once() {
        let mut l = life(DestroyPolicy::lifetime(600));
        l.last_activity_ms = 10 * MIN;
        let now = 200 * MIN;
        assert_eq!(destroy_due(&l, 0, now), None, "lifetime not reached yet");
        l.policy = DestroyPolicy::idle(Some(60));
        assert_eq!(destroy_due(&l, 0, now), Some(DestroyReason::Idle));
    }

    #[test]
    fn keepalive_blocks_auto_destroy_but_not_a_schedule() {
        let mut l = life(DestroyPolicy::idle(Some(1)));
        l.keepalive = true;
        assert_eq!(destroy_due(&l, 0, 1000 * MIN), None);
        l.destroy_at_ms = Some(10 * MIN);
        assert_eq!(destroy_due(&l, 0, 10 * MIN - 1), None);
        assert_eq!(destroy_due(&l, 0, 10 * MIN), Some(DestroyReason::Scheduled));
    }

    #[test]
    fn policy_ranges() {
        assert!(DestroyPolicy::idle(Some(0)).validate().is_err());
        assert!(DestroyPolicy::idle(Some(1)).validate().is_ok());
        assert!(DestroyPolicy::idle(Some(1440)).validate().is_ok());
        assert!(DestroyPolicy::idle(Some(1441)).validate().is_err());
        assert!(DestroyPolicy::lifetime(59).validate().is_err());
        assert!(DestroyPolicy::lifetime(10_080).validate().is_ok());
        let no_minutes = DestroyPolicy {
            kind: PolicyKind::Lifetime,
            minutes: None,
        };
        assert!(no_minutes.validate().is_err());
        let e = DestroyPolicy::lifetime(10_081).validate().unwrap_err();
        assert!(e.message.contains("60..=10080"), "{}", e.message);
    }

    #[test]
    fn destroy_policy_json_and_postcard_agree() {
        let p: DestroyPolicy =
            serde_json::from_str(r#"{"type":"lifetime","minutes":90}"#).expect("json");
        assert_eq!(p, DestroyPolicy::lifetime(90));
        let p: DestroyPolicy = serde_json::from_str(r#"{"type":"idle"}"#).expect("json");
        assert_eq!(p, DestroyPolicy::idle(None));
        assert!(serde_json::from_str::<DestroyPolicy>(r#"{"type":"never"}"#).is_err());
        for p in [DestroyPolicy::idle(None), DestroyPolicy::lifetime(60)] {
            let bytes = postcard::to_allocvec(&p).expect("postcard");
            assert_eq!(
                postcard::from_bytes::<DestroyPolicy>(&bytes).expect("back"),
                p
            );
        }
    }

    #[test]
    fn offline_exit_at_grace_and_never_for_whitelisted() {
        assert!(!offline_due(1000, 30_000, false, 30_999));
        assert!(offline_due(1000, 30_000, false, 31_000));
        assert!(!offline_due(1000, 30_000, true, u64::MAX));
    }

    #[test]
    fn minutes_and_user_counts_are_bounded() {
        assert!(check_minutes(0).is_err());
        assert_eq!(check_minutes(1).expect("ok"), MIN);
        assert!(check_minutes(43_200).is_ok());
        let e = check_minutes(43_201).unwrap_err();
        assert!(e.message.contains("43200"), "{}", e.message);
        let users: Vec<String> = (0..21).map(|i| format!("u{i}")).collect();
        assert!(check_users(&users[..20]).is_ok());
        let e = check_users(&users).unwrap_err();
        assert!(e.message.contains("20"), "{}", e.message);
        assert!(check_users(&[]).is_err());
        assert!(check_users(&["bad id".into()]).is_err());
    }

    #[test]
    fn bans_and_mutes_expire_exactly() {
        let mut m = Moderation::default();
        m.bans.insert("a".into(), 100);
        m.mutes.insert("b".into(), 200);
        assert_eq!(m.banned_until("a", 99), Some(100));
        assert_eq!(m.banned_until("a", 100), None);
        assert_eq!(m.muted_until("b", 199), Some(200));
        assert!(m.expire(150));
        assert!(m.bans.is_empty() && m.mutes.len() == 1);
        assert!(!m.expire(150));
    }

    #[test]
    fn send_check_order_global_then_whitelist_then_mutes() {
        let mut room = Moderation::default();
        let mut global = GlobalPolicy::default();
        assert!(check_send("u", &room, &global, 0).is_ok());
        room.mute_all = true;
        assert_eq!(
            check_send("u", &room, &global, 0).unwrap_err().code,
            ErrorCode::Muted
        );
        room.mute_all_whitelist.insert("u".into());
        assert!(check_send("u", &room, &global, 0).is_ok());
        // The mute-all whitelist also overrides a member mute.
        room.mute_all = false;
        room.mutes.insert("u".into(), 1000);
        assert!(check_send("u", &room, &global, 0).is_ok());
        room.mute_all_whitelist.clear();
        assert!(check_send("u", &room, &global, 999).is_err());
        assert!(check_send("u", &room, &global, 1000).is_ok(), "mute ended");
        // A global mute beats the whitelist.
        room.mute_all_whitelist.insert("u".into());
        global.global_mutes.insert("u".into(), 500);
        let e = check_send("u", &room, &global, 10).unwrap_err();
        assert!(e.message.contains("globally"), "{}", e.message);
        assert!(check_send("u", &room, &global, 500).is_ok());
    }

    #[test]
    fn classification_protected_beats_low() {
        let mut room = Moderation::default();
        let mut global = GlobalPolicy::default();
        global.low_types.insert("like".into());
        global.type_whitelist.insert("gift".into());
        room.user_whitelist.insert("host".into());
        assert_eq!(classify(None, "x", true, &room, &global), Class::Protected);
        assert_eq!(
            classify(Some("a"), "chat", false, &room, &global),
            Class::Normal
        );
        assert_eq!(
            classify(Some("a"), "chat", true, &room, &global),
            Class::Low
        );
        assert_eq!(
            classify(Some("a"), "like", false, &room, &global),
            Class::Low
        );
        assert_eq!(
            classify(Some("a"), "gift", true, &room, &global),
            Class::Protected
        );
        assert_eq!(
            classify(Some("host"), "like", true, &room, &global),
            Class::Protected
        );
    }

    #[test]
    fn egress_sheds_low_first_then_normal_never_protected() {
        let cap = 4096;
        assert!(!shed_on_egress(Class::Low, 1024, cap));
        assert!(shed_on_egress(Class::Low, 1025, cap));
        assert!(!shed_on_egress(Class::Normal, 2048, cap));
        assert!(shed_on_egress(Class::Normal, 2049, cap));
        assert!(!shed_on_egress(Class::Protected, cap * 100, cap));
        // At any lag, whatever sheds normal also sheds low.
        for lag in 0..=cap {
            if shed_on_egress(Class::Normal, lag, cap) {
                assert!(shed_on_egress(Class::Low, lag, cap));
            }
        }
    }

    #[test]
    fn token_bucket_bursts_then_refills_at_rate() {
        let mut b = TokenBucket::new(10, 20, 0);
        assert_eq!((0..25).filter(|_| b.try_take(0)).count(), 20);
        assert!(!b.try_take(99));
        assert!(b.try_take(100), "one token after 100 ms at 10/s");
        assert!(!b.try_take(100));
        assert_eq!(
            (0..30).filter(|_| b.try_take(10_000)).count(),
            20,
            "capped at burst"
        );
    }

    #[test]
    fn ingress_budget_reserves_for_normal_and_extra_for_protected() {
        let cfg = BudgetConfig {
            window_ms: 1000,
            total: 40,
            reserved: 20,
            protected_extra: 20,
        };
        let mut b = IngressBudget::new(cfg);
        assert_eq!((0..100).filter(|_| b.admit(Class::Low, 0)).count(), 20);
        assert_eq!((0..100).filter(|_| b.admit(Class::Normal, 0)).count(), 20);
        assert!(!b.admit(Class::Low, 0));
        assert_eq!(
            (0..100).filter(|_| b.admit(Class::Protected, 0)).count(),
            20
        );
        assert!(!b.admit(Class::Protected, 999));
        assert!(b.admit(Class::Low, 1000), "new window");
    }

    #[test]
    fn protected_within_its_share_is_never_refused() {
        let cfg = BudgetConfig {
            window_ms: 1000,
            total: 40,
            reserved: 20,
            protected_extra: 20,
        };
        let mut b = IngressBudget::new(cfg);
        for _ in 0..40 {
            b.admit(Class::Normal, 0);
        }
        assert_eq!((0..20).filter(|_| b.admit(Class::Protected, 0)).count(), 20);
    }
}
