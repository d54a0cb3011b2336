//! A client's capabilities: which VDIs it may read or write, as `sheepctl auth add --caps`
//! spells them: `vdi=vm-*:rw, vdi=golden:r`. A pattern is a VDI name in which `*` stands for
//! any run of characters and `?` for one; a VDI's snapshots go by its name. Of several
//! matching capabilities the widest counts. Anything no capability names is refused.

use serde::{Deserialize, Serialize};

/// What a capability allows on a VDI's objects and names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Access {
    /// Read its data, open it, read its attributes.
    Read = 1,
    /// Everything: write, snapshot, clone from it, resize, delete, lock.
    ReadWrite = 2,
}

impl Access {
    pub fn from_byte(b: u8) -> Option<Access> {
        match b {
            1 => Some(Access::Read),
            2 => Some(Access::ReadWrite),
            _ => None,
        }
    }

    /// As in a capability: `r` or `rw`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "r",
            Access::ReadWrite => "rw",
        }
    }

    /// Whether this access is enough for `wanted`.
    pub fn allows(self, wanted: Access) -> bool {
        self >= wanted
    }
}

/// One capability: `vdi=PATTERN:ACCESS`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cap {
    pub pattern: String,
    pub access: Access,
}

/// The most capabilities one client has.
pub const MAX_CAPS: usize = 64;
/// The longest pattern.
pub const MAX_PATTERN_LEN: usize = 255;

/// A client's capabilities, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps(pub Vec<Cap>);

impl Caps {
    /// Parses `vdi=PATTERN:r|rw` items separated by commas. The error says which item is wrong.
    pub fn parse(text: &str) -> Result<Caps, String> {
        let mut caps = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some(rest) = item.strip_prefix("vdi=") else {
                return Err(format!("{item:?}: a capability is `vdi=PATTERN:r` or `vdi=PATTERN:rw`"));
            };
            let Some((pattern, access)) = rest.rsplit_once(':') else {
                return Err(format!("{item:?}: say the access after the pattern (`:r` or `:rw`)"));
            };
            let access = match access.trim() {
                "r" => Access::Read,
                "rw" => Access::ReadWrite,
                other => return Err(format!("{item:?}: access {other:?} is neither `r` nor `rw`")),
            };
            let pattern = pattern.trim();
            if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
                return Err(format!("{item:?}: a pattern is 1 to {MAX_PATTERN_LEN} bytes"));
            }
            if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("{item:?}: a pattern has no spaces or control characters"));
            }
            caps.push(Cap { pattern: pattern.to_string(), access });
        }
        if caps.is_empty() {
            return Err("no capability given (e.g. `vdi=vm-*:rw, vdi=golden:r`)".into());
        }
        if caps.len() > MAX_CAPS {
            return Err(format!("at most {MAX_CAPS} capabilities per client"));
        }
        Ok(Caps(caps))
    }

    /// The text `parse` reads back.
    pub fn render(&self) -> String {
        self.0.iter().map(|c| format!("vdi={}:{}", c.pattern, c.access.as_str())).collect::<Vec<_>>().join(", ")
    }

    /// The widest access any capability gives on the VDI named `vdi`; None: no access.
    pub fn access(&self, vdi: &str) -> Option<Access> {
        self.0.iter().filter(|c| glob_match(&c.pattern, vdi)).map(|c| c.access).max()
    }
}

/// Whether `name` matches `pattern` (`*`: any run, `?`: any one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // The classic two-pointer match with one backtrack point: linear in practice, never
    // exponential (the bound matters: patterns come from administrators, names from anyone).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_globs() {
        for (p, n) in [("vm-*", "vm-a"), ("vm-*", "vm-"), ("*", "x"), ("a?c", "abc"), ("*b*", "abc"), ("g", "g")] {
            assert!(glob_match(p, n), "{p} {n}");
        }
        for (p, n) in [("vm-*", "vm"), ("vm-*", "xvm-a"), ("a?c", "ac"), ("g", "golden"), ("*x", "abc")] {
            assert!(!glob_match(p, n), "{p} {n}");
        }
        assert!(!glob_match(&"*a".repeat(20), &"a".repeat(30).replace('a', "b")));
    }

    #[test]
    fn caps_parse_render_and_grant_the_widest() {
        let c = Caps::parse("vdi=vm-*:rw, vdi=golden:r").unwrap();
        assert_eq!(c.render(), "vdi=vm-*:rw, vdi=golden:r");
        assert_eq!(Caps::parse(&c.render()).unwrap(), c);
        assert_eq!(c.access("vm-a"), Some(Access::ReadWrite));
        assert_eq!(c.access("golden"), Some(Access::Read));
        assert_eq!(c.access("other"), None);
        let both = Caps::parse("vdi=*:r,vdi=vm-a:rw").unwrap();
        assert_eq!(both.access("vm-a"), Some(Access::ReadWrite));
        assert_eq!(both.access("vm-b"), Some(Access::Read));
        assert!(Access::ReadWrite.allows(Access::Read) && !Access::Read.allows(Access::ReadWrite));
    }

    #[test]
    fn bad_caps_say_what_is_wrong() {
        assert!(Caps::parse("").unwrap_err().contains("no capability"));
        assert!(Caps::parse("pool=x:rw").unwrap_err().contains("vdi=PATTERN"));
        assert!(Caps::parse("vdi=x").unwrap_err().contains(":r"));
        assert!(Caps::parse("vdi=x:rwx").unwrap_err().contains("neither"));
        assert!(Caps::parse("vdi=:r").unwrap_err().contains("1 to"));
        assert!(Caps::parse("vdi=a b:r").unwrap_err().contains("spaces"));
        let many = vec!["vdi=a:r"; MAX_CAPS + 1].join(",");
        assert!(Caps::parse(&many).unwrap_err().contains("at most"));
    }
}
