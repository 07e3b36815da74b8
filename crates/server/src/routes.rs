//! The route table: which handler serves a REQUEST's route name.
//!
//! A route is an exact name or a prefix ending in `.*`; exact names win, then
//! the longest prefix. Targets are built-in handlers today; upstream HTTP
//! applications slot in as another [`Target`] variant.

use std::collections::HashMap;

/// A built-in handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Returns the body.
    Echo,
    /// `{"user","ip","session_expires_in"}`.
    Whoami,
}

/// What serves a route.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Target {
    /// Handled inside the gateway.
    Builtin(Builtin),
    /// Forwarded to an upstream HTTP application (`POST <upstream>/<route>`).
    Upstream(http::Uri),
    /// Handled by Rust code registered when embedding the gateway.
    Handler(std::sync::Arc<dyn crate::handler::RouteHandler>),
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Builtin(a), Self::Builtin(b)) => a == b,
            (Self::Upstream(a), Self::Upstream(b)) => a == b,
            (Self::Handler(a), Self::Handler(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Target {}

/// One configured route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// As configured: `name` or `prefix.*`.
    pub pattern: String,
    /// Handler.
    pub target: Target,
    /// Frames without ENC get `ERR encryption_required`.
    pub sensitive: bool,
}

impl Route {
    /// Validates a pattern.
    pub fn new(pattern: &str, target: Target, sensitive: bool) -> Result<Self, String> {
        let stem = pattern.strip_suffix(".*").unwrap_or(pattern);
        if stem.is_empty() || pattern.len() > wsgate_proto::envelope::MAX_NAME_LEN {
            return Err(format!(
                "{pattern:?} must be 1 to 1024 bytes, an exact name or a prefix like \"app.*\""
            ));
        }
        if stem.contains('*') {
            return Err(format!(
                "{pattern:?}: `*` is only allowed as the final `.*`"
            ));
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            target,
            sensitive,
        })
    }
}

/// Routes by exact name and by prefix.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Looked up once per request: foldhash, not SipHash, which was most of
    /// a lookup's cost (docs/benchmarks.md, round 11). The keys are the
    /// operator's; a client only probes them, so a flood of names it chooses
    /// cannot lengthen a chain.
    exact: HashMap<String, Route, foldhash::fast::RandomState>,
    /// (prefix including the trailing dot, route), longest first.
    prefixes: Vec<(String, Route)>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The defaults: `sys.echo` → echo, `sys.whoami` → whoami.
    pub fn with_defaults() -> Self {
        let mut t = Self::new();
        for (name, b) in [("sys.echo", Builtin::Echo), ("sys.whoami", Builtin::Whoami)] {
            t.exact.insert(
                name.to_owned(),
                Route {
                    pattern: name.to_owned(),
                    target: Target::Builtin(b),
                    sensitive: false,
                },
            );
        }
        t
    }

    /// Adds a route, replacing one with the same pattern (so config can
    /// override a default).
    pub fn insert(&mut self, route: Route) -> Result<(), String> {
        match route.pattern.strip_suffix('*') {
            Some(prefix) => {
                let prefix = prefix.to_owned();
                self.prefixes.retain(|(p, _)| *p != prefix);
                self.prefixes.push((prefix, route));
                self.prefixes
                    .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            }
            None => {
                self.exact.insert(route.pattern.clone(), route);
            }
        }
        Ok(())
    }

    /// The route serving `name`, if any.
    pub fn lookup(&self, name: &str) -> Option<&Route> {
        if let Some(r) = self.exact.get(name) {
            return Some(r);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| name.len() > prefix.len() && name.starts_with(prefix.as_str()))
            .map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let mut t = RouteTable::with_defaults();
        t.insert(Route::new("a.*", Target::Builtin(Builtin::Echo), false).unwrap())
            .unwrap();
        t.insert(Route::new("a.b.*", Target::Builtin(Builtin::Whoami), true).unwrap())
            .unwrap();
        t.insert(Route::new("a.b.c", Target::Builtin(Builtin::Echo), false).unwrap())
            .unwrap();
        assert_eq!(t.lookup("a.x").unwrap().pattern, "a.*");
        assert_eq!(t.lookup("a.b.x").unwrap().pattern, "a.b.*");
        assert_eq!(t.lookup("a.b.c").unwrap().pattern, "a.b.c");
        assert!(t.lookup("a.").is_none());
        assert!(t.lookup("a").is_none());
        assert!(t.lookup("b.x").is_none());
        assert_eq!(
            t.lookup("sys.echo").unwrap().target,
            Target::Builtin(Builtin::Echo)
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        for p in ["", ".*", "a*", "*.b", "a.*.b"] {
            assert!(
                Route::new(p, Target::Builtin(Builtin::Echo), false).is_err(),
                "{p}"
            );
        }
    }

    #[test]
    fn config_can_override_a_default() {
        let mut t = RouteTable::with_defaults();
        t.insert(Route::new("sys.echo", Target::Builtin(Builtin::Echo), true).unwrap())
            .unwrap();
        assert!(t.lookup("sys.echo").unwrap().sensitive);
    }
}
