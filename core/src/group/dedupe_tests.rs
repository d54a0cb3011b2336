//! The request table on its own: what it decides for first tries, retries and late copies,
//! and how it stays bounded.

use super::*;
use crate::namespace::NamespaceError;

fn req(client: u64, seq: u64, first_pending: u64) -> RequestId {
    RequestId { client, seq, first_pending }
}

/// What a caller of the table does: check, apply (here: answer `answer`) if told to, record.
/// Returns the answer given and whether it was applied.
fn submit(t: &mut RequestTable, index: u64, r: RequestId, answer: Answer) -> (Answer, bool) {
    match t.check(index, &r) {
        Err(e) => (Err(e), false),
        Ok(Some(recorded)) => (recorded, false),
        Ok(None) => {
            t.record(index, &r, &answer);
            (answer, true)
        }
    }
}

/// A call the table has not seen: it applies.
fn first(t: &mut RequestTable, index: u64, r: RequestId, answer: Answer) {
    assert_eq!(submit(t, index, r, answer.clone()), (answer, true), "{r:?} is applied");
}

#[test]
fn a_retry_is_answered_from_the_record_and_not_applied() {
    let mut t = RequestTable::default();
    let r = req(7, 1, 1);
    assert!(!t.seen(&r));
    assert_eq!(submit(&mut t, 1, r, Ok(Reply::Seq(11))), (Ok(Reply::Seq(11)), true));
    assert!(t.seen(&r));
    // Whatever the retry would answer now, it answers what the first try did.
    assert_eq!(submit(&mut t, 2, r, Ok(Reply::Seq(99))), (Ok(Reply::Seq(11)), false));
    assert_eq!(submit(&mut t, 3, r, Ok(Reply::Done)), (Ok(Reply::Seq(11)), false));
    // Another call of the same client, or the same number from another client, is new.
    assert_eq!(submit(&mut t, 4, req(7, 2, 1), Ok(Reply::Seq(12))), (Ok(Reply::Seq(12)), true));
    assert_eq!(submit(&mut t, 5, req(8, 1, 1), Ok(Reply::Seq(13))), (Ok(Reply::Seq(13)), true));
    assert_eq!(t.clients(), 2);
}

#[test]
fn a_refusal_is_recorded_too() {
    let mut t = RequestTable::default();
    let refused: Answer = Err(GroupError::Namespace(NamespaceError::Exists("v".into())));
    assert_eq!(submit(&mut t, 1, req(1, 1, 1), refused.clone()), (refused.clone(), true));
    assert_eq!(submit(&mut t, 2, req(1, 1, 1), Ok(Reply::Done)), (refused, false));
}

#[test]
fn calls_in_flight_at_once_apply_in_any_order_once_each() {
    let mut t = RequestTable::default();
    // Calls 1, 2 and 3 are sent together; 3 is ordered first, then 1, then 2.
    for (index, seq) in [(1, 3), (2, 1), (3, 2)] {
        assert!(submit(&mut t, index, req(5, seq, 1), Ok(Reply::Seq(seq))).1, "call {seq} applies");
    }
    for (index, seq) in [(4, 2), (5, 3), (6, 1)] {
        assert_eq!(submit(&mut t, index, req(5, seq, 1), Ok(Reply::Done)), (Ok(Reply::Seq(seq)), false));
    }
    assert_eq!(t.answers_of(5), 3);
}

#[test]
fn answers_below_the_first_pending_call_are_forgotten_and_late_copies_refused() {
    let mut t = RequestTable::default();
    first(&mut t, 1, req(3, 1, 1), Ok(Reply::Seq(1)));
    first(&mut t, 2, req(3, 2, 1), Ok(Reply::Seq(2)));
    // Call 3 says 1 and 2 are finished: their answers go.
    first(&mut t, 3, req(3, 3, 3), Ok(Reply::Seq(3)));
    assert_eq!(t.answers_of(3), 1);
    // A late copy of call 2 (forwarded before the client moved on) is refused, unapplied.
    let (answer, applied) = submit(&mut t, 4, req(3, 2, 1), Ok(Reply::Done));
    assert_eq!(answer, Err(GroupError::StaleRequest { client: 3, seq: 2 }));
    assert!(!applied);
    assert!(t.seen(&req(3, 2, 1)), "finished: applying it again changes nothing");
    // A request claiming a later call is pending than itself is malformed.
    assert!(matches!(t.check(5, &req(3, 4, 5)), Err(GroupError::BadRequest(_))));
    assert_eq!(submit(&mut t, 6, req(3, 3, 3), Ok(Reply::Done)), (Ok(Reply::Seq(3)), false));
}

#[test]
fn a_client_with_too_many_answers_forgets_the_oldest_and_refuses_it_after() {
    let mut t = RequestTable::default();
    let n = ANSWERS_KEPT as u64 + 5;
    for seq in 1..=n {
        first(&mut t, seq, req(9, seq, 1), Ok(Reply::Seq(seq)));
    }
    assert_eq!(t.answers_of(9), ANSWERS_KEPT);
    // The forgotten ones are refused, never applied a second time.
    for seq in 1..=5 {
        assert_eq!(
            submit(&mut t, 100 + seq, req(9, seq, 1), Ok(Reply::Done)),
            (Err(GroupError::StaleRequest { client: 9, seq }), false)
        );
    }
    assert_eq!(submit(&mut t, 200, req(9, 6, 1), Ok(Reply::Done)), (Ok(Reply::Seq(6)), false));
}

#[test]
fn the_table_is_bounded_and_forgets_the_least_recently_used_client() {
    let mut t = RequestTable::default();
    let clients = CLIENTS_KEPT as u64;
    for c in 1..=clients {
        first(&mut t, c, req(c, 1, 1), Ok(Reply::Seq(c)));
    }
    // Client 1 calls again: client 2 is now the least recently used.
    first(&mut t, clients + 1, req(1, 2, 2), Ok(Reply::Done));
    first(&mut t, clients + 2, req(clients + 1, 1, 1), Ok(Reply::Done));
    assert_eq!(t.clients(), CLIENTS_KEPT);
    assert!(!t.seen(&req(2, 1, 1)), "client 2 was forgotten");
    assert!(t.seen(&req(1, 2, 2)) && t.seen(&req(3, 1, 1)) && t.seen(&req(clients + 1, 1, 1)));
    // A retry that only looks touches the client too: client 3 stays, client 4 goes.
    assert_eq!(t.check(clients + 3, &req(3, 1, 1)), Ok(Some(Ok(Reply::Seq(3)))));
    first(&mut t, clients + 4, req(clients + 2, 1, 1), Ok(Reply::Done));
    assert!(t.seen(&req(3, 1, 1)));
    assert!(!t.seen(&req(4, 1, 1)));
    assert_eq!(t.clients(), CLIENTS_KEPT);
}

#[test]
fn every_replica_keeps_the_same_table() {
    // The same requests at the same log positions: the same tables, through any eviction,
    // and the same after a round trip through a snapshot's encoding.
    let run = || {
        let mut t = RequestTable::default();
        for i in 0..3 * CLIENTS_KEPT as u64 {
            let client = (i * 7919) % (2 * CLIENTS_KEPT as u64) + 1;
            // Some are late copies, refused: the same on every replica too.
            let _ = submit(&mut t, i + 1, req(client, i / 3 + 1, i / 3 + 1), Ok(Reply::Seq(i)));
        }
        t
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    assert_eq!(a.clients(), CLIENTS_KEPT);
    let restored: RequestTable = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(restored, a);
}
