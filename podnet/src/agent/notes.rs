//! The agent's log of what it leaves out: why an object is skipped (a bad or conflicting Node,
//! an IPv6-only or RequireDualStack Service on a node without an IPv6 service CIDR) or what
//! part of it is (the IPv6 ClusterIP of a dual-stack Service there, an externalIP of a family
//! the Service has no ClusterIP of, a Node's IPv6 pod CIDR),
//! one line per object when its note appears or changes, so a relist or an unrelated change
//! does not repeat it.

use std::collections::BTreeMap;

/// The notes last logged, by object (`namespace/name` or node name).
#[derive(Debug, Default)]
pub struct Notes {
    logged: BTreeMap<String, String>,
}

impl Notes {
    /// Object `key` now has `note` (`None`: nothing left out); logs it if it is new.
    pub fn set(&mut self, key: String, note: Option<String>) {
        match note {
            Some(note) => {
                if self.logged.get(&key) != Some(&note) {
                    log(&note);
                    self.logged.insert(key, note);
                }
            }
            None => {
                self.logged.remove(&key);
            }
        }
    }

    /// Every object's notes at once (a relist, or the whole peer list): logs the new ones.
    pub fn replace_all(&mut self, notes: BTreeMap<String, String>) {
        for (key, note) in &notes {
            if self.logged.get(key) != Some(note) {
                log(note);
            }
        }
        self.logged = notes;
    }

    /// Whether `key` has a note (what was logged last).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.logged.get(key).map(String::as_str)
    }
}

fn log(note: &str) {
    eprintln!("podnet agent: left out: {note}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_kept_until_it_changes_or_goes() {
        let mut notes = Notes::default();
        notes.set("shop/web".to_owned(), Some("a".to_owned()));
        assert_eq!(notes.get("shop/web"), Some("a"));
        notes.replace_all([("shop/web".to_owned(), "b".to_owned())].into());
        assert_eq!(notes.get("shop/web"), Some("b"));
        notes.set("shop/web".to_owned(), None);
        assert_eq!(notes.get("shop/web"), None);
    }
}
