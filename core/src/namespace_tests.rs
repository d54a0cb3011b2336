//! Snapshots, clones, rollbacks, resizes, deletions and attributes of the namespace.

use super::*;

fn ns_with(name: &str) -> (Namespace, VdiEntry) {
    let mut ns = Namespace::default();
    let e = ns.create(name, 1 << 30, 3, 22, 1).unwrap();
    (ns, e)
}

#[test]
fn a_snapshot_freezes_the_working_vdi_and_a_new_one_goes_on() {
    let (mut ns, first) = ns_with("v");
    let (snap, working) = ns.take_snapshot("v", "s1", 5).unwrap();
    assert_eq!(snap.vid, first.vid, "the old inode becomes the snapshot");
    assert_eq!(snap.snapshot.as_deref(), Some("s1"));
    assert_eq!(snap.label(), "v@s1");
    assert_ne!(working.vid, first.vid);
    assert_eq!(working.parent, Some(first.vid));
    assert_eq!(ns.get("v"), Some(&working));
    assert_eq!(ns.snapshot("v", "s1"), Some(&snap));
    assert_eq!(ns.list().count(), 2);
    assert_eq!(
        ns.take_snapshot("v", "s1", 6),
        Err(NamespaceError::SnapshotExists { name: "v".into(), tag: "s1".into() })
    );
    assert!(matches!(ns.take_snapshot("v", "a/b", 6), Err(NamespaceError::Invalid(_))));
    assert_eq!(ns.take_snapshot("w", "s", 6), Err(NamespaceError::NoVdi("w".into())));
    let (s2, w2) = ns.take_snapshot("v", "s2", 7).unwrap();
    assert_eq!(s2.vid, working.vid);
    assert_eq!(ns.ancestors(&w2).collect::<Vec<_>>(), vec![working.vid, first.vid]);
}

#[test]
fn a_snapshot_lists_the_time_it_was_taken() {
    let (mut ns, first) = ns_with("v");
    assert_eq!(first.created_ms, 1);
    let (s1, w1) = ns.take_snapshot("v", "s1", 500).unwrap();
    assert_eq!((s1.created_ms, w1.created_ms), (500, 500), "taken at 500, not when id {} began", first.vid);
    let (s2, _) = ns.take_snapshot("v", "s2", 900).unwrap();
    assert_eq!(s2.created_ms, 900, "not 500, when the id it froze began");
    let times: Vec<(Option<&str>, u64)> = ns.list().map(|e| (e.snapshot.as_deref(), e.created_ms)).collect();
    assert!(times.contains(&(Some("s1"), 500)) && times.contains(&(Some("s2"), 900)), "{times:?}");
    // A clone of it and a rollback to it keep their own times; the snapshot keeps its own.
    ns.clone_snapshot("v", "s1", "c", 1000).unwrap();
    ns.rollback("v", "s1", 1100).unwrap();
    assert_eq!(ns.snapshot("v", "s1").map(|e| e.created_ms), Some(500));
    assert_eq!(ns.get("v").map(|e| e.created_ms), Some(1100));
}

#[test]
fn snapshot_tags_are_named_as_tags_in_refusals() {
    let (mut ns, _) = ns_with("v");
    for (tag, want) in [
        ("", "a snapshot tag must not be empty"),
        ("a/b", "a snapshot tag must not contain '/'"),
        ("..", "\"..\" is not allowed as a snapshot tag"),
    ] {
        let err = ns.take_snapshot("v", tag, 5).unwrap_err();
        assert!(matches!(&err, NamespaceError::Invalid(m) if m == want), "{tag:?}: {err}");
    }
}

#[test]
fn size_limits_are_given_for_people() {
    let (mut ns, _) = ns_with("v");
    let err = ns.create("big", 5 << 40, 3, 22, 2).unwrap_err().to_string();
    assert_eq!(
        err,
        "size must be from 1 byte to 4.0 TiB (4398046511104 bytes) with 4.0 MiB objects, not 5.0 TiB \
         (5497558138880 bytes)"
    );
    let err = ns.resize("v", 512 << 20).unwrap_err().to_string();
    assert!(err.contains("is 1.0 GiB (1073741824 bytes): shrinking to 512.0 MiB (536870912 bytes)"), "{err}");
    let err = ns.set_attr("v", "k", Some(&vec![0; MAX_ATTR_VALUE + 1]), false).unwrap_err().to_string();
    assert_eq!(err, "an attribute value is at most 64.0 KiB (65536 bytes), not 64.0 KiB (65537 bytes)");
}

#[test]
fn clones_and_rollbacks_start_from_a_snapshot() {
    let (mut ns, first) = ns_with("v");
    let (snap, working) = ns.take_snapshot("v", "s1", 5).unwrap();
    ns.resize("v", 2 << 30).unwrap();
    let c = ns.clone_snapshot("v", "s1", "c", 6).unwrap();
    assert_eq!((c.parent, c.size, c.snapshot.clone()), (Some(snap.vid), 1 << 30, None));
    assert_eq!(ns.clone_snapshot("v", "s1", "c", 6), Err(NamespaceError::Exists("c".into())));
    assert!(matches!(ns.clone_snapshot("v", "nope", "d", 6), Err(NamespaceError::NoSnapshot { .. })));

    let (back, deletion) = ns.rollback("v", "s1", 7).unwrap();
    assert_eq!(back.parent, Some(first.vid));
    assert_eq!(back.size, 1 << 30, "a rollback restores the snapshot's size");
    assert_eq!(deletion.removed.len(), 1);
    assert_eq!(deletion.collectable.iter().map(|e| e.vid).collect::<Vec<_>>(), vec![working.vid]);
    assert!(ns.is_deleted(working.vid));
}

#[test]
fn resize_only_grows() {
    let (mut ns, _) = ns_with("v");
    assert_eq!(ns.resize("v", 2 << 30).unwrap().size, 2 << 30);
    assert!(matches!(ns.resize("v", 1 << 30), Err(NamespaceError::Invalid(m)) if m.contains("shrinking")));
    assert!(matches!(ns.resize("v", (2 << 30) + 1), Err(NamespaceError::Invalid(_))));
    assert!(matches!(ns.resize("v", 8 << 40), Err(NamespaceError::Invalid(_))));
    assert_eq!(ns.resize("w", 1 << 30), Err(NamespaceError::NoVdi("w".into())));
}

#[test]
fn objects_stay_while_a_live_vdi_descends_from_a_deleted_snapshot() {
    let (mut ns, first) = ns_with("v");
    let (s1, _w) = ns.take_snapshot("v", "s1", 5).unwrap();
    let clone = ns.clone_snapshot("v", "s1", "c", 6).unwrap();
    // The snapshot has descendants (the working VDI and the clone): retired, not collectable.
    let (deleted, d) = ns.delete_snapshot("v", "s1").unwrap();
    assert_eq!(deleted, s1);
    assert_eq!(d.removed, vec![s1.clone()]);
    assert!(d.collectable.is_empty());
    assert!(!ns.is_deleted(first.vid));
    assert!(ns.snapshot("v", "s1").is_none());
    assert_eq!(ns.by_vid(first.vid).map(|e| e.vid), Some(first.vid), "still known while needed");
    // Deleting v (its working VDI): the clone still reads the retired snapshot.
    let (_, d) = ns.delete("v").unwrap();
    assert_eq!(d.collectable.len(), 1, "only v's working VDI: {d:?}");
    assert!(!ns.is_deleted(first.vid));
    // The clone goes: now nothing reads the snapshot's objects.
    let (deleted, d) = ns.delete("c").unwrap();
    assert_eq!(deleted, clone);
    let mut gone: Vec<VdiId> = d.collectable.iter().map(|e| e.vid).collect();
    gone.sort();
    let mut want = vec![clone.vid, first.vid];
    want.sort();
    assert_eq!(gone, want);
    assert!(ns.is_deleted(first.vid) && ns.is_deleted(clone.vid));
    assert_eq!(ns.list().count(), 0);
}

#[test]
fn deleting_a_vdi_takes_its_snapshots_along() {
    let (mut ns, first) = ns_with("v");
    let (_, w1) = ns.take_snapshot("v", "a", 2).unwrap();
    let (_, w2) = ns.take_snapshot("v", "b", 3).unwrap();
    let (deleted, d) = ns.delete("v").unwrap();
    assert_eq!(deleted, w2);
    assert_eq!(d.removed.len(), 3);
    let mut gone: Vec<VdiId> = d.collectable.iter().map(|e| e.vid).collect();
    gone.sort();
    let mut want = vec![first.vid, w1.vid, w2.vid];
    want.sort();
    assert_eq!(gone, want);
    // The name is free again, with a new id.
    let again = ns.create("v", 4096, 3, 22, 9).unwrap();
    assert!(!want.contains(&again.vid));
}

#[test]
fn attributes() {
    let (mut ns, _) = ns_with("v");
    ns.set_attr("v", "k", Some(b"one"), false).unwrap();
    assert_eq!(ns.get_attr("v", "k").unwrap(), b"one");
    assert_eq!(
        ns.set_attr("v", "k", Some(b"two"), true),
        Err(NamespaceError::AttrExists { name: "v".into(), key: "k".into() })
    );
    ns.set_attr("v", "k", Some(b"two"), false).unwrap();
    assert_eq!(ns.get_attr("v", "k").unwrap(), b"two");
    ns.set_attr("v", "k", None, false).unwrap();
    assert!(matches!(ns.get_attr("v", "k"), Err(NamespaceError::NoAttr { .. })));
    assert!(matches!(ns.set_attr("v", "k", None, false), Err(NamespaceError::NoAttr { .. })));
    assert!(matches!(ns.set_attr("v", "", Some(b"x"), false), Err(NamespaceError::Invalid(_))));
    assert!(matches!(
        ns.set_attr("v", "big", Some(&vec![0; MAX_ATTR_VALUE + 1]), false),
        Err(NamespaceError::Invalid(_))
    ));
    assert!(matches!(ns.set_attr("w", "k", Some(b"x"), false), Err(NamespaceError::NoVdi(_))));
    ns.set_attr("v", "k", Some(b"x"), false).unwrap();
    // Attributes go with the VDI.
    ns.delete("v").unwrap();
    ns.create("v", 4096, 3, 22, 9).unwrap();
    assert!(ns.get_attr("v", "k").is_err());
}

/// Refuses `op` on a namespace that breaks an invariant, and shows nothing changed.
fn refused_unchanged<T: std::fmt::Debug>(
    ns: &mut Namespace,
    op: impl FnOnce(&mut Namespace) -> Result<T, NamespaceError>,
) -> NamespaceError {
    let before = ns.clone();
    let err = op(ns).expect_err("refused");
    assert!(matches!(err, NamespaceError::Invariant { .. }), "{err:?}");
    assert_eq!(*ns, before, "a refusal changes nothing");
    err
}

#[test]
fn a_snapshot_filed_under_another_id_is_refused_not_a_panic() {
    let (mut ns, first) = ns_with("v");
    let (snap, _) = ns.take_snapshot("v", "s1", 5).unwrap();
    // Damage the state: the snapshot is filed under an id that is not its own.
    let entry = ns.snapshots.remove(&snap.vid).unwrap();
    let wrong = VdiId::new(first.vid.get() ^ 0x40).unwrap();
    ns.snapshots.insert(wrong, entry);
    let err = refused_unchanged(&mut ns, |ns| ns.delete_snapshot("v", "s1"));
    assert!(err.to_string().contains("is inconsistent"), "{err}");
    // What does not touch the damaged entry still works.
    ns.create("w", 4096, 3, 22, 6).unwrap();
    ns.resize("v", 2 << 30).unwrap();
}

#[test]
fn an_id_in_use_but_not_taken_is_never_handed_out_again() {
    let (mut ns, first) = ns_with("v");
    // Damage the state: the live VDI's id is forgotten among the taken ones.
    ns.taken.remove(&first.vid);
    refused_unchanged(&mut ns, |ns| ns.take_snapshot("v", "s1", 5));
    // A name whose first free id is another one still gets it.
    let other = ns.create("other", 4096, 3, 22, 6).unwrap();
    assert_ne!(other.vid, first.vid);
}

#[test]
fn an_object_size_beyond_the_largest_is_refused_not_a_panic() {
    let (mut ns, first) = ns_with("v");
    refused_unchanged(&mut ns, |ns| ns.create("w", 4096, 3, 64, 2));
    // Damage the state: an entry with an object size no format allows.
    ns.vdis.get_mut("v").unwrap().object_size_shift = 70;
    refused_unchanged(&mut ns, |ns| ns.resize("v", 2 << 30));
    ns.vdis.get_mut("v").unwrap().object_size_shift = first.object_size_shift;
    assert_eq!(ns.resize("v", 2 << 30).unwrap().size, 2 << 30);
}
