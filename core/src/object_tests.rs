use super::*;

fn vid(raw: u32) -> VdiId {
    VdiId::new(raw).unwrap()
}

#[test]
fn fnv1a64_matches_the_reference_vectors() {
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn vdi_ids_are_24_bits_and_never_zero() {
    assert_eq!(VdiId::new(0), Err(VdiIdOutOfRange(0)));
    assert_eq!(VdiId::new(1 << 24), Err(VdiIdOutOfRange(1 << 24)));
    assert_eq!(vid(0xff_ffff).get(), VdiId::MAX);
    assert_eq!(vid(VdiId::MAX).next_wrapping(), vid(1));
    assert_eq!(vid(7).next_wrapping(), vid(8));
    assert_eq!(vid(0x7c2b25).to_string(), "7c2b25");
    assert_eq!(vid(0x25).to_string(), "000025");
    assert_eq!("7c2b25".parse::<VdiId>(), Ok(vid(0x7c2b25)));
    assert_eq!("25".parse::<VdiId>(), Ok(vid(0x25)));
    for bad in ["", "0", "1000000", "+1", "xyz", "0x12"] {
        assert!(bad.parse::<VdiId>().is_err(), "{bad:?} should be refused");
    }
    let json = serde_json::to_string(&vid(42)).unwrap();
    assert_eq!(json, "42");
    assert!(serde_json::from_str::<VdiId>("0").is_err());
}

#[test]
fn data_object_layout() {
    let oid = ObjectId::data(vid(0xabcdef), 0x1234_5678);
    assert_eq!(oid.raw(), 0x00ab_cdef_1234_5678);
    assert_eq!(oid.vid(), vid(0xabcdef));
    assert_eq!(oid.index(), 0x1234_5678);
    assert_eq!(oid.kind(), ObjectKind::Data);
    assert!(oid.is_data() && !oid.is_inode() && !oid.is_vmstate() && !oid.is_attribute());
}

#[test]
fn inode_vmstate_and_attribute_layout() {
    let inode = ObjectId::inode(vid(0xabcdef));
    assert_eq!(inode.raw(), 0x80ab_cdef_0000_0000);
    assert!(inode.is_inode());
    assert_eq!((inode.vid(), inode.index()), (vid(0xabcdef), 0));

    let state = ObjectId::vmstate(vid(3), 9);
    assert_eq!(state.raw(), 0x4000_0003_0000_0009);
    assert_eq!(state.kind(), ObjectKind::VmState);

    let attr = ObjectId::attribute(vid(3), 9);
    assert_eq!(attr.raw(), 0x2000_0003_0000_0009);
    assert_eq!(attr.kind(), ObjectKind::Attribute);
}

#[test]
fn raw_ids_are_checked() {
    for good in [0x0000_0001_0000_0000, 0x80ff_ffff_0000_0000, 0x4000_0002_ffff_ffff] {
        assert_eq!(ObjectId::from_raw(good).map(ObjectId::raw), Ok(good));
    }
    let bad = [
        0,                     // no VDI
        0x0000_0000_0000_0005, // no VDI
        0xc000_0001_0000_0000, // two kind bits
        0x0100_0001_0000_0000, // an unused bit
        0x1000_0001_0000_0000, // an unused bit
        0x8000_0001_0000_0001, // an inode with an index
    ];
    for raw in bad {
        assert_eq!(ObjectId::from_raw(raw), Err(BadObjectId(raw)), "{raw:#x}");
    }
}

#[test]
fn display_and_parse_round_trip() {
    let ids = [
        ObjectId::data(vid(1), 0),
        ObjectId::data(vid(VdiId::MAX), u32::MAX),
        ObjectId::inode(vid(0x7c2b25)),
        ObjectId::vmstate(vid(2), 3),
        ObjectId::attribute(vid(4), 5),
    ];
    for oid in ids {
        let text = oid.to_string();
        assert_eq!(text.len(), 16);
        assert_eq!(text.parse::<ObjectId>(), Ok(oid));
        let json = serde_json::to_string(&oid).unwrap();
        assert_eq!(serde_json::from_str::<ObjectId>(&json).unwrap(), oid);
    }
    assert_eq!(ObjectId::inode(vid(0x7c2b25)).to_string(), "807c2b2500000000");
    assert_eq!("807C2B2500000000".parse::<ObjectId>(), Ok(ObjectId::inode(vid(0x7c2b25))));
}

#[test]
fn parse_refuses_other_spellings() {
    let bad = [
        "",
        "100000000",         // too short: one object, one spelling
        "0000000100000000 ", // trailing space
        "+000000100000000",  // sign
        "00000001000000000", // too long
        "000000010000000g",  // not hex
        "0000000000000005",  // well-formed hex, but no VDI
        "8000000100000001",  // inode with an index
    ];
    for text in bad {
        assert!(text.parse::<ObjectId>().is_err(), "{text:?} should be refused");
    }
    assert!(serde_json::from_str::<ObjectId>("5").is_err());
}

#[test]
fn vdi_id_for_name_is_the_masked_fnv_hash() {
    let expected = (fnv1a64(b"alice") & 0xff_ffff) as u32;
    assert_eq!(vdi_id_for_name("alice").get(), expected.max(1));
    assert_eq!(vdi_id_for_name("alice"), vdi_id_for_name("alice"));
    assert_ne!(vdi_id_for_name("alice"), vdi_id_for_name("bob"));
}

#[test]
fn probe_skips_taken_ids_and_wraps_past_zero() {
    let start = vid(10);
    assert_eq!(probe(start, |_| false), Some(start));
    assert_eq!(probe(start, |v| v.get() < 13), Some(vid(13)));
    // From the top, the next free id after MAX is 1: 0 is never handed out.
    assert_eq!(probe(vid(VdiId::MAX - 1), |v| v.get() >= VdiId::MAX - 1), Some(vid(1)));
    assert_eq!(probe(vid(VdiId::MAX), |v| v.get() != 5), Some(vid(5)));
    assert_eq!(probe(start, |_| true), None);
}

#[test]
fn vdi_names() {
    for good in ["a", "vm-disk.0", "data_01", "ünïcode", "with space", "...", &"x".repeat(255)] {
        assert_eq!(validate_vdi_name(good), Ok(()), "{good:?} should be accepted");
    }
    const NAME: &str = "a VDI name";
    assert_eq!(validate_vdi_name(""), Err(NameError::Empty { what: NAME }));
    assert_eq!(validate_vdi_name("."), Err(NameError::Dots { what: NAME, text: ".".into() }));
    assert_eq!(validate_vdi_name(".."), Err(NameError::Dots { what: NAME, text: "..".into() }));
    assert_eq!(validate_vdi_name("a/b"), Err(NameError::Slash { what: NAME }));
    assert!(matches!(validate_vdi_name("a\0b"), Err(NameError::Nul { .. })));
    assert!(matches!(validate_vdi_name("a\nb"), Err(NameError::ControlChar { code: 0x0a, .. })));
    assert!(matches!(validate_vdi_name("a\u{7f}"), Err(NameError::ControlChar { .. })));
    assert!(matches!(validate_vdi_name("a\u{85}"), Err(NameError::ControlChar { .. })));
    let long = "é".repeat(128); // 256 bytes, 128 characters: the limit is in bytes
    assert_eq!(validate_vdi_name(&long), Err(NameError::TooLong { what: "a VDI name", len: 256 }));
    let msg = validate_vdi_name("a\tb").unwrap_err().to_string();
    assert!(msg.contains("control characters") && msg.contains("U+0009"), "{msg}");
}

#[test]
fn snapshot_tags() {
    assert_eq!(validate_snapshot_tag(""), Ok(()));
    assert_eq!(validate_snapshot_tag("before/upgrade"), Ok(()));
    assert!(validate_snapshot_tag("a\rb").is_err());
    assert!(validate_snapshot_tag(&"t".repeat(256)).is_err());
}

#[test]
fn new_snapshot_tags_are_named_as_tags_in_errors() {
    assert_eq!(validate_tag("before-upgrade"), Ok(()));
    let msg = |t: &str| validate_tag(t).unwrap_err().to_string();
    assert_eq!(msg(""), "a snapshot tag must not be empty");
    assert_eq!(msg("a/b"), "a snapshot tag must not contain '/'");
    assert_eq!(msg(".."), "\"..\" is not allowed as a snapshot tag");
    assert_eq!(msg("a\0b"), "a snapshot tag must not contain a NUL byte");
    assert_eq!(msg(&"t".repeat(256)), "a snapshot tag is 256 bytes long; at most 255 are allowed");
    assert!(msg("a\nb").starts_with("a snapshot tag must not contain control characters"));
    assert_eq!(validate_vdi_name("").unwrap_err().to_string(), "a VDI name must not be empty");
}
