//! The cluster's clients (other than `client.admin`) and their capabilities, as the group
//! keeps them: `sheepctl auth add/caps/rm/list`. A client's key is derived from the cluster's
//! secret, its name and its entry's generation (`crate::auth::client_key`); the generation is
//! new each time a name is added, so a removed client's key stays dead when the name comes
//! back. What an entry lets its client touch: `crate::auth::clients`.

use super::{GroupError, GroupState, Reply};
use crate::auth::caps::Caps;
use crate::auth::clients::{ClientEntry, MAX_CLIENTS};
use crate::auth::{validate_entity, ADMIN, DAEMON};

impl GroupState {
    /// `auth add`: a new client with `caps`.
    pub(super) fn auth_add(&mut self, name: &str, caps: &Caps) -> Result<Reply, GroupError> {
        validate_client_name(name)?;
        if self.clients.contains_key(name) {
            return Err(GroupError::BadRequest(format!(
                "{name} exists already (`auth caps` changes its capabilities, `auth rm` removes it)"
            )));
        }
        if self.clients.len() >= MAX_CLIENTS {
            return Err(GroupError::BadRequest(format!("the cluster keeps at most {MAX_CLIENTS} clients")));
        }
        self.next_client_generation += 1;
        let entry = ClientEntry { name: name.into(), generation: self.next_client_generation, caps: caps.clone() };
        self.clients.insert(name.into(), entry.clone());
        Ok(Reply::Client(entry))
    }

    /// `auth caps`: new capabilities for a client; its key stays.
    pub(super) fn auth_caps(&mut self, name: &str, caps: &Caps) -> Result<Reply, GroupError> {
        let entry = self.clients.get_mut(name).ok_or_else(|| no_client(name))?;
        entry.caps = caps.clone();
        Ok(Reply::Client(entry.clone()))
    }

    /// `auth rm`: the client's key is refused from now on (by storage nodes once its ticket
    /// expires).
    pub(super) fn auth_rm(&mut self, name: &str) -> Result<Reply, GroupError> {
        let entry = self.clients.remove(name).ok_or_else(|| no_client(name))?;
        Ok(Reply::Client(entry))
    }

    /// The entry of client `name` if its key is of `generation` (else it was removed, or
    /// removed and added again: the key it proved is not the current one).
    pub fn client(&self, name: &str, generation: u64) -> Option<&ClientEntry> {
        self.clients.get(name).filter(|e| e.generation == generation)
    }
}

fn no_client(name: &str) -> GroupError {
    GroupError::BadRequest(format!("there is no client {name} (`sheepctl auth list` shows them)"))
}

fn validate_client_name(name: &str) -> Result<(), GroupError> {
    validate_entity(name).map_err(GroupError::BadRequest)?;
    if name == ADMIN || name == DAEMON {
        return Err(GroupError::BadRequest(format!("{name} is built in: it has every right and cannot be changed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::caps::Access;
    use crate::auth::clients::grants;
    use crate::namespace::Namespace;

    #[test]
    fn clients_are_added_changed_and_removed_with_a_new_generation_each_time() {
        let mut s = GroupState::default();
        let caps = Caps::parse("vdi=vm-*:rw").unwrap();
        let Ok(Reply::Client(a)) = s.auth_add("client.a", &caps) else { panic!() };
        assert_eq!(a.generation, 1);
        assert!(s.auth_add("client.a", &caps).unwrap_err().to_string().contains("exists"));
        assert!(s.auth_add("client.admin", &caps).is_err());
        assert!(s.auth_add("bob", &caps).is_err());
        let r = Caps::parse("vdi=vm-*:r").unwrap();
        let Ok(Reply::Client(changed)) = s.auth_caps("client.a", &r) else { panic!() };
        assert_eq!((changed.generation, changed.caps.clone()), (1, r));
        assert_eq!(s.client("client.a", 1).map(|e| e.generation), Some(1));
        s.auth_rm("client.a").unwrap();
        assert!(s.client("client.a", 1).is_none());
        assert!(s.auth_rm("client.a").unwrap_err().to_string().contains("no client"));
        let Ok(Reply::Client(again)) = s.auth_add("client.a", &caps) else { panic!() };
        assert_eq!(again.generation, 2, "the old key stays dead");
        assert!(s.client("client.a", 1).is_none());
    }

    #[test]
    fn grants_cover_matching_names_and_read_their_ancestors() {
        let mut ns = Namespace::default();
        let golden = ns.create("golden", 1 << 20, 1, 22, 0).unwrap();
        let (snap, _) = ns.take_snapshot("golden", "base", 1).unwrap();
        let vm = ns.clone_snapshot("golden", "base", "vm-a", 2).unwrap();
        let other = ns.create("other", 1 << 20, 1, 22, 3).unwrap();
        let caps = Caps::parse("vdi=vm-*:rw").unwrap();
        let g = grants(&ns, &caps);
        assert!(g.contains(&(vm.vid.get(), Access::ReadWrite)));
        assert!(g.contains(&(snap.vid.get(), Access::Read)), "the clone's parent snapshot");
        assert!(!g.iter().any(|(v, _)| *v == other.vid.get()));
        assert!(!g.iter().any(|(v, _)| *v == ns.get("golden").unwrap().vid.get()), "not golden's working VDI");
        let _ = golden;
    }
}
