//! The keyring file: who this process is and the key it proves it holds; a daemon's (and
//! the administrator's, as `sheepctl auth init` makes it) also holds the cluster's secret.
//!
//! ```text
//! # Sheepdog keyring: keep it secret (mode 0600)
//! entity = client.admin
//! key = <64 hex digits>
//! secret = <64 hex digits>
//! ```

use super::{client_key, validate_entity, Key, ADMIN, KEY_LEN};

/// A parsed keyring.
#[derive(Clone, PartialEq, Eq)]
pub struct Keyring {
    /// Who this process authenticates as when it is a client.
    pub entity: String,
    pub key: Key,
    /// The cluster's secret: what a daemon needs (every daemon check every peer's proof
    /// with it, and proves itself with it to other daemons).
    pub secret: Option<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a key in a log line.
        write!(f, "Keyring({}{})", self.entity, if self.secret.is_some() { ", with the cluster secret" } else { "" })
    }
}

impl Keyring {
    /// The keyring of a new cluster: its `secret` and the administrator's key.
    pub fn new_cluster(secret: Key) -> Keyring {
        Keyring { entity: ADMIN.into(), key: client_key(&secret, ADMIN, 0), secret: Some(secret) }
    }

    /// The keyring of client `name` of the cluster of `secret`, whose entry is of `generation`.
    pub fn for_client(secret: &Key, name: &str, generation: u64) -> Result<Keyring, String> {
        validate_entity(name)?;
        Ok(Keyring { entity: name.into(), key: client_key(secret, name, generation), secret: None })
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = String::from("# Sheepdog keyring: keep it secret (mode 0600)\n");
        s += &format!("entity = {}\nkey = {}\n", self.entity, hex::encode(self.key));
        if let Some(secret) = &self.secret {
            s += &format!("secret = {}\n", hex::encode(secret));
        }
        s
    }

    /// Parses the file's text. The error says what is wrong, with the line number.
    pub fn parse(text: &str) -> Result<Keyring, String> {
        let (mut entity, mut key, mut secret) = (None, None, None);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(format!("line {}: not `name = value`", n + 1));
            };
            let (name, value) = (name.trim(), value.trim());
            match name {
                "entity" => entity = Some(value.to_string()),
                "key" => key = Some(parse_key(value).map_err(|e| format!("line {}: key: {e}", n + 1))?),
                "secret" => secret = Some(parse_key(value).map_err(|e| format!("line {}: secret: {e}", n + 1))?),
                other => return Err(format!("line {}: unknown setting {other:?}", n + 1)),
            }
        }
        let entity = entity.ok_or("no `entity = ...` line")?;
        validate_entity(&entity)?;
        let key = key.ok_or("no `key = ...` line")?;
        if let Some(s) = &secret {
            if client_key(s, &entity, 0) != key && *s != key {
                return Err(format!("its key is not {entity}'s key in the cluster of its secret"));
            }
        }
        Ok(Keyring { entity, key, secret })
    }
}

fn parse_key(value: &str) -> Result<Key, String> {
    let bytes = hex::decode(value).map_err(|_| format!("not hex digits ({} expected)", KEY_LEN * 2))?;
    bytes.try_into().map_err(|_| format!("{} hex digits expected", KEY_LEN * 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let k = Keyring::new_cluster([3u8; KEY_LEN]);
        assert_eq!(Keyring::parse(&k.render()).unwrap(), k);
        assert!(!format!("{k:?}").contains("0303"), "no key in Debug");
        let c = Keyring::for_client(&[3u8; KEY_LEN], "client.vm", 1).unwrap();
        assert_eq!(Keyring::parse(&c.render()).unwrap(), c);
        assert!(c.secret.is_none());
        assert!(Keyring::for_client(&[3u8; KEY_LEN], "vm", 1).is_err());
        let text = k.render();
        assert!(Keyring::parse(&text.replace("entity = client.admin", "entity = client.bob")).is_err());
        let bad_key: String = text
            .lines()
            .map(|l| if l.starts_with("key") { "key = zz\n".to_string() } else { format!("{l}\n") })
            .collect();
        assert!(Keyring::parse(&bad_key).unwrap_err().contains("hex"));
        assert!(Keyring::parse("entity = client.admin\n").unwrap_err().contains("key"));
        assert!(Keyring::parse("nonsense\n").unwrap_err().contains("line 1"));
        assert!(Keyring::parse(&format!("{text}colour = red\n")).unwrap_err().contains("colour"));
    }
}
