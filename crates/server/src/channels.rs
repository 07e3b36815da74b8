//! Channel configuration: patterns, sensitivity and who may subscribe or
//! publish (protocol.md §6.2).
//!
//! A pattern's segments are separated by `.`; `{user}` matches exactly one
//! segment and makes the channel private to that user; `*` may only be the
//! last segment and matches one or more characters. The first pattern that
//! matches applies.

/// Who may subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribePolicy {
    /// Any logged-in user.
    Authenticated,
    /// Only the user named by `{user}`.
    Owner,
    /// Nobody (publish-only channels, e.g. for `/api/publish` fan-in elsewhere).
    None,
}

/// Who may publish (API keys may always publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishPolicy {
    /// Only upstream applications with an API key.
    Api,
    /// Any logged-in user (and API keys).
    Authenticated,
    /// The user named by `{user}` (and API keys).
    Owner,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    User,
    /// `*`: one or more characters, last segment only.
    Rest,
}

/// One configured channel pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRule {
    /// As configured.
    pub pattern: String,
    segments: Vec<Segment>,
    /// EVENTs are encrypted per connection; SUBSCRIBE/PUBLISH need ENC.
    pub sensitive: bool,
    /// Who may subscribe.
    pub subscribe: SubscribePolicy,
    /// Who may publish.
    pub publish: PublishPolicy,
    /// `history = N`: the channel's events are kept in a stream and sent as
    /// EVENT_AT (protocol.md §6.5). `None` (the default): plain EVENTs.
    pub history: Option<crate::store::HistoryPolicy>,
    /// `presence = true`: who is subscribed is known fleet-wide, with join
    /// and leave events (protocol.md §6.6).
    pub presence: bool,
}

/// A match: the rule and, for `{user}` patterns, the owner.
#[derive(Debug, Clone, Copy)]
pub struct ChannelMatch<'a> {
    /// The rule that applies.
    pub rule: &'a ChannelRule,
    /// The segment `{user}` matched.
    pub owner: Option<&'a str>,
}

impl ChannelRule {
    /// Parses and validates a pattern.
    pub fn new(
        pattern: &str,
        sensitive: bool,
        subscribe: SubscribePolicy,
        publish: PublishPolicy,
    ) -> Result<Self, String> {
        if pattern.is_empty() || pattern.len() > wsgate_proto::envelope::MAX_NAME_LEN {
            return Err(format!("{pattern:?} must be 1 to 1024 bytes"));
        }
        let parts: Vec<&str> = pattern.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = match *part {
                "" => return Err(format!("{pattern:?} has an empty segment")),
                "{user}" => Segment::User,
                "*" if i + 1 == parts.len() => Segment::Rest,
                p if p.contains('*') || p.contains('{') || p.contains('}') => {
                    return Err(format!(
                        "{pattern:?}: `*` may only be the whole last segment and `{{user}}` a whole segment"
                    ));
                }
                p => Segment::Literal(p.to_owned()),
            };
            segments.push(seg);
        }
        if segments.iter().filter(|s| **s == Segment::User).count() > 1 {
            return Err(format!("{pattern:?}: at most one {{user}} segment"));
        }
        let has_user = segments.contains(&Segment::User);
        if !has_user && (subscribe == SubscribePolicy::Owner || publish == PublishPolicy::Owner) {
            return Err(format!(
                "{pattern:?}: \"owner\" needs a {{user}} segment in the pattern"
            ));
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            segments,
            sensitive,
            subscribe,
            publish,
            history: None,
            presence: false,
        })
    }

    /// The same rule, with presence on or off.
    #[must_use]
    pub fn with_presence(mut self, presence: bool) -> Self {
        self.presence = presence;
        self
    }

    /// The same rule, keeping history as `policy` says.
    #[must_use]
    pub fn with_history(mut self, policy: Option<crate::store::HistoryPolicy>) -> Self {
        self.history = policy;
        self
    }

    /// Whether `name` matches; returns the `{user}` segment if any.
    fn matches<'n>(&self, name: &'n str) -> Option<Option<&'n str>> {
        let mut rest = name;
        let mut owner = None;
        for (i, seg) in self.segments.iter().enumerate() {
            let last = i + 1 == self.segments.len();
            match seg {
                Segment::Rest => return (!rest.is_empty()).then_some(owner),
                _ => {
                    let (head, tail) = match rest.split_once('.') {
                        Some((h, t)) if !last => (h, Some(t)),
                        Some(_) => return None,
                        None if last => (rest, None),
                        None => return None,
                    };
                    match seg {
                        Segment::Literal(l) if l == head => {}
                        Segment::User if !head.is_empty() => owner = Some(head),
                        _ => return None,
                    }
                    match tail {
                        Some(t) => rest = t,
                        None => return Some(owner),
                    }
                }
            }
        }
        None
    }
}

/// All channel rules, in configuration order.
#[derive(Debug, Clone, Default)]
pub struct ChannelTable {
    rules: Vec<ChannelRule>,
}

impl ChannelTable {
    /// Appends a rule (later rules apply only when earlier ones do not match).
    pub fn push(&mut self, rule: ChannelRule) {
        self.rules.push(rule);
    }

    /// The first rule matching `name`.
    pub fn lookup<'a>(&'a self, name: &'a str) -> Option<ChannelMatch<'a>> {
        self.rules
            .iter()
            .find_map(|rule| rule.matches(name).map(|owner| ChannelMatch { rule, owner }))
    }

    /// Whether no channel is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any pattern has presence.
    pub fn has_presence(&self) -> bool {
        self.rules.iter().any(|r| r.presence)
    }
}

impl ChannelMatch<'_> {
    /// Whether `user` owns the channel (a name containing `.` owns none).
    pub fn is_owner(&self, user: &str) -> bool {
        !user.contains('.') && self.owner == Some(user)
    }

    /// Whether `user` may subscribe.
    pub fn may_subscribe(&self, user: &str) -> bool {
        match self.rule.subscribe {
            SubscribePolicy::Authenticated => true,
            SubscribePolicy::Owner => self.is_owner(user),
            SubscribePolicy::None => false,
        }
    }

    /// Whether `user` (a WebSocket client) may publish.
    pub fn may_publish(&self, user: &str) -> bool {
        match self.rule.publish {
            PublishPolicy::Api => false,
            PublishPolicy::Authenticated => true,
            PublishPolicy::Owner => self.is_owner(user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ChannelTable {
        let mut t = ChannelTable::default();
        t.push(
            ChannelRule::new(
                "user.{user}.*",
                true,
                SubscribePolicy::Owner,
                PublishPolicy::Api,
            )
            .unwrap(),
        );
        t.push(
            ChannelRule::new(
                "news",
                false,
                SubscribePolicy::Authenticated,
                PublishPolicy::Api,
            )
            .unwrap(),
        );
        t.push(
            ChannelRule::new(
                "chat.*",
                false,
                SubscribePolicy::Authenticated,
                PublishPolicy::Authenticated,
            )
            .unwrap(),
        );
        t.push(
            ChannelRule::new(
                "inbox.{user}",
                true,
                SubscribePolicy::Owner,
                PublishPolicy::Owner,
            )
            .unwrap(),
        );
        t
    }

    #[test]
    fn user_matches_exactly_one_segment_and_star_one_or_more_characters() {
        let t = table();
        let m = t.lookup("user.alice.orders").unwrap();
        assert_eq!(
            (m.rule.pattern.as_str(), m.owner),
            ("user.{user}.*", Some("alice"))
        );
        assert_eq!(t.lookup("user.alice.a.b").unwrap().owner, Some("alice"));
        assert!(
            t.lookup("user.alice").is_none(),
            "* needs at least one character"
        );
        assert!(t.lookup("user.alice.").is_none());
        assert!(t.lookup("user..x").is_none(), "{{user}} is never empty");
        assert_eq!(t.lookup("inbox.bob").unwrap().owner, Some("bob"));
        assert!(t.lookup("inbox.bob.x").is_none());
        assert!(t.lookup("news").is_some());
        assert!(t.lookup("news.x").is_none());
        assert!(t.lookup("newsy").is_none());
        assert!(t.lookup("chat.room.1").is_some());
        assert!(t.lookup("chat").is_none());
    }

    #[test]
    fn policies_follow_ownership() {
        let t = table();
        let m = t.lookup("user.alice.orders").unwrap();
        assert!(m.may_subscribe("alice"));
        assert!(!m.may_subscribe("bob"));
        assert!(!m.may_publish("alice"), "publish = api");
        let inbox = t.lookup("inbox.bob").unwrap();
        assert!(inbox.may_publish("bob") && !inbox.may_publish("alice"));
        assert!(t.lookup("chat.x").unwrap().may_publish("anyone"));
    }

    #[test]
    fn a_user_name_with_a_dot_owns_no_channel() {
        let t = table();
        // "a.b" cannot be matched by {user}, and never counts as an owner.
        let m = t.lookup("inbox.a").unwrap();
        assert!(!m.is_owner("a.b"));
        assert!(t.lookup("inbox.a.b").is_none());
    }

    #[test]
    fn first_matching_pattern_applies() {
        let mut t = ChannelTable::default();
        t.push(ChannelRule::new("a.*", false, SubscribePolicy::None, PublishPolicy::Api).unwrap());
        t.push(
            ChannelRule::new(
                "a.b",
                true,
                SubscribePolicy::Authenticated,
                PublishPolicy::Api,
            )
            .unwrap(),
        );
        assert_eq!(t.lookup("a.b").unwrap().rule.pattern, "a.*");
    }

    #[test]
    fn bad_patterns_are_refused() {
        for p in [
            "",
            "a..b",
            "*.a",
            "a*",
            "a.{user}x",
            "{user}.{user}",
            "a.b*",
        ] {
            assert!(
                ChannelRule::new(p, false, SubscribePolicy::Authenticated, PublishPolicy::Api)
                    .is_err(),
                "{p}"
            );
        }
        assert!(
            ChannelRule::new("news", false, SubscribePolicy::Owner, PublishPolicy::Api).is_err()
        );
    }
}
