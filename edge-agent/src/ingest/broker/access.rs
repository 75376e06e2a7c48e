//! Who may connect to the embedded broker, and what each client may publish and subscribe
//! to: pure decisions, checked by the broker on every CONNECT, PUBLISH, will and
//! SUBSCRIBE (a refusal closes the connection).
//!
//! - The agent logs in with a login of its own (the source's credentials when it has
//!   some, else a random one made at start that never leaves the process); it may do
//!   anything, and only it may use the agent's client ids, so no device can take over the
//!   agent's session by reusing its predictable id.
//! - Configured users (`embedded.users`) may publish and subscribe within their filters.
//! - Anonymous clients are accepted only when the broker listens on loopback and no login
//!   is configured at all; they may then do anything, as on any local broker.

use std::fmt;

use rumqttd::AclAction;

use crate::config::EmbeddedUser;

/// The embedded broker's access rules.
#[derive(Clone, PartialEq, Eq)]
pub struct Access {
    /// The agent's own username and password.
    pub agent: (String, String),
    /// Client ids only the agent may use.
    pub agent_client_ids: Vec<String>,
    /// Configured clients.
    pub users: Vec<EmbeddedUser>,
    /// Whether clients without a login are accepted.
    pub anonymous: bool,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|u| u.username.as_str()).collect();
        f.debug_struct("Access")
            .field("agent", &self.agent.0)
            .field("agent_client_ids", &self.agent_client_ids)
            .field("users", &users)
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

impl Access {
    /// Whether a CONNECT with this client id and login (empty strings without one) is
    /// accepted.
    pub fn authenticate(&self, client_id: &str, username: &str, password: &str) -> bool {
        if username == self.agent.0 && same(password, &self.agent.1) {
            return true;
        }
        if self.agent_client_ids.iter().any(|id| id == client_id) {
            return false;
        }
        if username.is_empty() && password.is_empty() {
            return self.anonymous;
        }
        self.users
            .iter()
            .any(|u| u.username == username && same(password, &u.password))
    }

    /// Whether the client logged in as `username` may `action` on `topic` (a topic name
    /// to publish to, or a filter to subscribe to).
    pub fn allows(&self, username: &str, action: AclAction, topic: &str) -> bool {
        if username == self.agent.0 || (username.is_empty() && self.anonymous) {
            return true;
        }
        let Some(user) = self.users.iter().find(|u| u.username == username) else {
            return false;
        };
        match action {
            AclAction::Publish => user.publish.iter().any(|f| topic_matches(f, topic)),
            AclAction::Subscribe => user.subscribe.iter().any(|f| filter_within(topic, f)),
        }
    }
}

/// Constant-time comparison of two secrets.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether the topic name `topic` matches the filter `filter` (MQTT 3.1.1 section 4.7: `+`
/// one level, `#` the rest; a filter starting with a wildcard never matches a `$` topic).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (l, Some(t)) if l == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Whether every topic the filter `filter` can match is matched by `allowed`.
pub fn filter_within(filter: &str, allowed: &str) -> bool {
    let mut levels = filter.split('/');
    for a in allowed.split('/') {
        match (a, levels.next()) {
            ("#", _) => return true,
            ("+", Some(l)) if l != "#" => {}
            (a, Some(l)) if a == l && l != "+" && l != "#" => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(anonymous: bool) -> Access {
        Access {
            agent: ("edge-agent".into(), "s3cret-agent".into()),
            agent_client_ids: vec!["agent".into(), "agent-actions".into()],
            users: vec![EmbeddedUser {
                username: "press-1".into(),
                password: "pw1".into(),
                publish: vec!["sensors/press-1/#".into()],
                subscribe: vec!["alerts/press-1".into(), "cmd/+/press-1".into()],
            }],
            anonymous,
        }
    }

    #[test]
    fn logins_and_the_agents_client_ids() {
        let a = access(false);
        let cases = [
            ("agent", "edge-agent", "s3cret-agent", true),
            ("anything", "edge-agent", "s3cret-agent", true),
            ("agent", "edge-agent", "wrong", false),
            ("dev1", "press-1", "pw1", true),
            ("agent", "press-1", "pw1", false),
            ("agent-actions", "press-1", "pw1", false),
            ("dev1", "press-1", "pw2", false),
            ("dev1", "press-1", "", false),
            ("dev1", "", "", false),
            ("dev1", "nobody", "pw1", false),
        ];
        for (id, user, pass, want) in cases {
            assert_eq!(a.authenticate(id, user, pass), want, "{id} {user} {pass}");
        }
        let open = access(true);
        assert!(open.authenticate("dev1", "", ""));
        assert!(
            !open.authenticate("agent", "", ""),
            "the agent's id stays its own"
        );
    }

    #[test]
    fn users_publish_and_subscribe_within_their_filters() {
        let a = access(false);
        let publish = [
            ("sensors/press-1/temp", true),
            ("sensors/press-1", true),
            ("sensors/press-2/temp", false),
            ("plc/valve1/cmd", false),
            ("sensors/press-1x/temp", false),
        ];
        for (topic, want) in publish {
            assert_eq!(
                a.allows("press-1", AclAction::Publish, topic),
                want,
                "{topic}"
            );
        }
        let subscribe = [
            ("alerts/press-1", true),
            ("cmd/a/press-1", true),
            ("cmd/+/press-1", true),
            ("#", false),
            ("alerts/#", false),
            ("alerts/+", false),
            ("cmd/#", false),
            ("cmd/+/+", false),
        ];
        for (filter, want) in subscribe {
            assert_eq!(
                a.allows("press-1", AclAction::Subscribe, filter),
                want,
                "{filter}"
            );
        }
        assert!(!a.allows("nobody", AclAction::Publish, "sensors/press-1/t"));
        assert!(!a.allows("", AclAction::Subscribe, "#"));
        assert!(a.allows("edge-agent", AclAction::Subscribe, "#"));
        assert!(access(true).allows("", AclAction::Subscribe, "#"));
    }

    #[test]
    fn topic_filters_match_as_mqtt_says() {
        let cases = [
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a//c", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/b/", false),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(topic_matches(filter, topic), want, "{filter} {topic}");
        }
    }
}
