//! Linearizability checker for histories of a key-value store.
//!
//! The algorithm is Wing & Gong's backtracking search over a doubly linked list of call/return
//! entries, with Lowe's memoisation of `(set of linearized operations, model state)` pairs (the
//! approach popularised by the Go library porcupine), reimplemented here from scratch.
//!
//! The store is checked one key at a time (P-compositionality: a history of independent registers
//! is linearizable iff the sub-history of every key is), and every key is modelled as a register
//! whose state is `Option<Value>` (`None` = absent), initially `None`.
//!
//! Real-time order and ties: operation A precedes operation B iff `A.complete < B.invoke`
//! (strictly). Two operations where one completes at exactly the instant the other is invoked are
//! therefore *concurrent*. In the entry list this is implemented by sorting entries by time and,
//! at equal times, putting calls before returns (and otherwise ordering by operation id). This is
//! the permissive choice: it can never report a violation that a finer clock could have excused.
//!
//! An operation with outcome [`Outcome::Unknown`] has its return at +infinity (its `complete`
//! field is ignored): it may take effect at any point after its invocation, or never (which is the
//! same as taking effect after everything else). Reads with an unknown outcome constrain nothing
//! and change nothing, so they are dropped. A definite operation whose `complete` is earlier than
//! its `invoke` is treated as completing at its invocation time.
//!
//! On top of the textbook search, a few reductions keep histories with many unknown outcomes
//! tractable; each preserves the verdict exactly:
//! - written values that nothing observes (no read returns them, no CAS expects them) are merged
//!   into one opaque value, since the model cannot tell them apart;
//! - definite operations are tried before unknown ones, and an unknown operation is only tried if
//!   it changes the state, and only one pending operation of each group of already-invoked
//!   unknown operations with identical effects (they can stand in for one another);
//! - the memo holds configurations proven to fail; a configuration with the same definite
//!   operations linearized and the same state, whose unknown operations linearized are a
//!   superset of a failed one's, fails too (it can only do less).
//!
//! Search steps are counted per key (one per candidate considered); a key exceeding the budget
//! is reported undecided. Memory is bounded by the number of steps.
//!
//! Only `std` is used, so this file also builds and tests standalone:
//! `rustc --edition 2021 --test tests/it/jepsen/checker.rs -o /tmp/checker-test && /tmp/checker-test`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

/// A value written; the harness makes every written value unique and interns it as a u64.
pub type Value = u64;

/// An operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write(Value),
    Delete,
    Cas { expect: Value, new: Value },
}

/// What the client observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A read answered: the value, or None for "not found".
    Read(Option<Value>),
    /// A write or a successful compare-and-swap was acknowledged.
    Ok,
    /// A delete answered: true = it deleted an existing key (204), false = the key was absent (404).
    Deleted(bool),
    /// A compare-and-swap was refused because the current value was not `expect` (HTTP 412);
    /// it had no effect.
    CasFailed,
    /// No definite answer (timeout, connection lost, "may or may not have been applied"):
    /// the operation may have taken effect at any time after its invocation, or never.
    Unknown,
}

/// One operation of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub key: String,
    pub client: usize,
    pub op: Op,
    pub outcome: Outcome,
    /// nanoseconds since the start of the run
    pub invoke: u64,
    /// nanoseconds since the start of the run; ignored for `Outcome::Unknown` (treated as +infinity)
    pub complete: u64,
}

/// The verdict for a whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Number of distinct keys in the history.
    pub keys: usize,
    /// Number of events in the history (including dropped unknown reads).
    pub ops: usize,
    /// True iff every key was proven linearizable: false when a violation was found *or* when
    /// some key is undecided (see `undecided` and `violation` to tell the two apart).
    pub linearizable: bool,
    /// keys whose search hit the budget (neither proven nor refuted)
    pub undecided: Vec<String>,
    /// for a violation: the key and a human-readable explanation (the ops of that key
    /// around the point where no linearization exists, one per line, with times and clients)
    pub violation: Option<(String, String)>,
}

/// Checks `history` key by key (keys in sorted order). Each key's search may take at most
/// `budget_per_key` steps; a key that needs more is listed in `Report::undecided`. Checking stops
/// at the first key found to be non-linearizable (so `undecided` only covers the keys checked
/// before it).
pub fn check(history: &[Event], budget_per_key: u64) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for ev in history {
        by_key.entry(ev.key.as_str()).or_default().push(ev);
    }
    let mut report = Report {
        keys: by_key.len(),
        ops: history.len(),
        linearizable: true,
        undecided: Vec::new(),
        violation: None,
    };
    for (key, events) in by_key {
        match check_key(key, &events, budget_per_key) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Undecided => {
                report.linearizable = false;
                report.undecided.push(key.to_string());
            }
            KeyVerdict::Violation(explanation) => {
                report.linearizable = false;
                report.violation = Some((key.to_string(), explanation));
                break;
            }
        }
    }
    report
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

type State = Option<Value>;

/// Applies `op` with observed `outcome` to `state`: the new state, or `None` if the outcome is
/// impossible in `state` (including malformed op/outcome combinations, which are never possible).
fn step(state: State, op: &Op, outcome: &Outcome) -> Option<State> {
    match (op, outcome) {
        (Op::Read, Outcome::Read(v)) => (*v == state).then_some(state),
        (Op::Read, Outcome::Unknown) => Some(state),
        (Op::Write(v), Outcome::Ok | Outcome::Unknown) => Some(Some(*v)),
        (Op::Delete, Outcome::Deleted(existed)) => (state.is_some() == *existed).then_some(None),
        (Op::Delete, Outcome::Unknown) => Some(None),
        (Op::Cas { expect, new }, Outcome::Ok) => (state == Some(*expect)).then_some(Some(*new)),
        (Op::Cas { expect, .. }, Outcome::CasFailed) => (state != Some(*expect)).then_some(state),
        (Op::Cas { expect, new }, Outcome::Unknown) => {
            // If it took effect, it either swapped or (state != expect) failed harmlessly; not
            // taking effect at all is covered by linearizing it at +infinity.
            Some(if state == Some(*expect) {
                Some(*new)
            } else {
                state
            })
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Per-key search
// ---------------------------------------------------------------------------------------------

/// An operation of one key, as the search sees it.
#[derive(Debug, Clone)]
struct KOp<'a> {
    ev: &'a Event,
    /// The operation as the model sees it: written values that are never observed replaced by
    /// the key's opaque value (see `canonicalize`).
    op: Op,
    invoke: u64,
    /// Effective completion: `u64::MAX` for unknown outcomes.
    complete: u64,
    definite: bool,
}

enum KeyVerdict {
    Linearizable,
    Undecided,
    Violation(String),
}

const NIL: usize = usize::MAX;

/// Doubly linked list of entries (calls, and returns unless absent) with a head sentinel at
/// node 0, supporting removal and re-insertion of an operation's entries (dancing links).
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: the operation id (unused for the sentinel).
    node_op: Vec<usize>,
    /// For each node: whether it is a call entry.
    is_call: Vec<bool>,
    /// For each operation id: (call node, return node), `NIL` where absent.
    nodes_of: Vec<(usize, usize)>,
}

impl EntryList {
    /// `entries` are `(time, 0 = call / 1 = return, op id)`; they are sorted, which puts calls
    /// before returns at equal times. `ops` is the number of operation ids.
    fn new(mut entries: Vec<(u64, u8, usize)>, ops: usize) -> EntryList {
        entries.sort_unstable();
        let count = entries.len() + 1;
        let mut list = EntryList {
            next: vec![NIL; count],
            prev: vec![NIL; count],
            node_op: vec![NIL; count],
            is_call: vec![false; count],
            nodes_of: vec![(NIL, NIL); ops],
        };
        for (i, &(_, kind, id)) in entries.iter().enumerate() {
            let node = i + 1;
            list.prev[node] = node - 1;
            list.next[node - 1] = node;
            list.node_op[node] = id;
            list.is_call[node] = kind == 0;
            if kind == 0 {
                list.nodes_of[id].0 = node;
            } else {
                list.nodes_of[id].1 = node;
            }
        }
        list
    }

    fn first(&self) -> usize {
        self.next[0]
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    /// Removes the entries of operation `id` (call first, then return).
    fn lift(&mut self, id: usize) {
        let (call, ret) = self.nodes_of[id];
        self.unlink(call);
        if ret != NIL {
            self.unlink(ret);
        }
    }

    /// Undoes `lift(id)`; lifts must be undone in reverse order (the search stack ensures it).
    fn unlift(&mut self, id: usize) {
        let (call, ret) = self.nodes_of[id];
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(call);
    }
}

/// Set of operation slots, one bit each. It tracks its first word that is not all ones and the
/// end of its last non-empty word, so that its compact form (see `Compact`) is cheap to compare.
/// Slots follow invocation order, so a linearized set is almost always "every slot below some
/// point, plus a few above it", and that window is small.
#[derive(Clone)]
struct Bitset {
    words: Vec<u64>,
    /// Index of the first word that is not all ones (`words.len()` if none).
    first: usize,
    /// One past the last non-zero word (0 if none).
    end: usize,
}

impl Bitset {
    fn new(n: usize) -> Bitset {
        let words = vec![0; n.div_ceil(64)];
        Bitset {
            first: 0,
            end: 0,
            words,
        }
    }
    fn set(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] |= 1 << (i % 64);
        self.end = self.end.max(w + 1);
        while self.first < self.words.len() && self.words[self.first] == u64::MAX {
            self.first += 1;
        }
    }
    fn clear(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] &= !(1 << (i % 64));
        self.first = self.first.min(w);
        while self.end > 0 && self.words[self.end - 1] == 0 {
            self.end -= 1;
        }
    }
    fn get(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }
    /// The words between the leading full ones and the trailing empty ones.
    fn window(&self) -> &[u64] {
        if self.end > self.first {
            &self.words[self.first..self.end]
        } else {
            &[]
        }
    }
    fn compact(&self) -> Compact {
        Compact {
            full_words: self.first,
            words: self.window().into(),
        }
    }
}

/// A bitset whose first `full_words` words are all ones, followed by `words`, then zeros.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Compact {
    full_words: usize,
    words: Box<[u64]>,
}

impl Compact {
    fn equals_set(&self, set: &Bitset) -> bool {
        self.full_words == set.first && *self.words == *set.window()
    }
}

/// A pseudo-random 64-bit mix (splitmix64's finaliser), for Zobrist hashing.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Zobrist hash contribution of definite slot `slot`.
fn slot_hash(slot: usize) -> u64 {
    mix(slot as u64 ^ 0x5EED_0FD3_F1A1_7E55)
}

/// Hash contribution of a state.
fn state_hash(state: State) -> u64 {
    match state {
        None => 0x0A85_E7C0_FFEE_0001,
        Some(v) => mix(v.wrapping_mul(0x2545_F491_4F6C_DD1D)),
    }
}

/// Hasher for keys that are already uniformly distributed hashes.
#[derive(Default)]
struct PreHashed(u64);

impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Configurations proven to have no completion, keyed by (definite operations linearized,
/// state) and found through the Zobrist hash of that pair; each holds the sets of unknown
/// operations linearized (words of the unknown bitset, trailing zero words trimmed), none a
/// subset of another. If the configuration with unknown set X has no completion, neither has one
/// with the same definite set and state and an unknown set Y ⊇ X: the extra unknown operations
/// of Y could equally have been left pending (at +infinity) from X, so any completion from Y
/// would also complete X.
#[derive(Default)]
struct FailedCache {
    map: HashMap<u64, Vec<FailedEntry>, std::hash::BuildHasherDefault<PreHashed>>,
}

struct FailedEntry {
    definite: Compact,
    state: State,
    unknown: Vec<Box<[u64]>>,
}

/// Whether `x ⊆ y`, both as bitset words with missing trailing words meaning zero.
fn is_subset(x: &[u64], y: &[u64]) -> bool {
    x.iter()
        .enumerate()
        .all(|(i, &w)| w & !y.get(i).copied().unwrap_or(0) == 0)
}

impl FailedCache {
    /// `hash` is the Zobrist hash of (`definite`, `state`).
    fn covers(&self, hash: u64, definite: &Bitset, unknown: &Bitset, state: State) -> bool {
        let Some(bucket) = self.map.get(&hash) else {
            return false;
        };
        let used = &unknown.words[..unknown.end];
        bucket
            .iter()
            .find(|e| e.state == state && e.definite.equals_set(definite))
            .is_some_and(|e| e.unknown.iter().any(|x| is_subset(x, used)))
    }

    fn insert(&mut self, hash: u64, definite: &Bitset, unknown: &Bitset, state: State) {
        let used = &unknown.words[..unknown.end];
        let bucket = self.map.entry(hash).or_default();
        match bucket
            .iter_mut()
            .find(|e| e.state == state && e.definite.equals_set(definite))
        {
            Some(entry) => {
                // Entries that the new one subsumes are redundant.
                entry.unknown.retain(|x| !is_subset(used, x));
                entry.unknown.push(used.into());
            }
            None => bucket.push(FailedEntry {
                definite: definite.compact(),
                state,
                unknown: vec![used.into()],
            }),
        }
    }
}

/// The furthest point the search reached before having to backtrack.
struct Furthest {
    /// Number of operations linearized at that point.
    depth: usize,
    /// The definite operation whose return entry was reached without it being linearizable.
    blocked: usize,
    /// The register state after the linearized prefix (with its real value, not the opaque one).
    state: State,
    /// The linearized prefix (definite slots, unknown slots).
    definite: Bitset,
    unknown: Bitset,
    /// The last few operations of the prefix, in linearization order.
    recent: Vec<usize>,
}

/// One linearized operation on the search stack.
struct Frame {
    id: usize,
    /// The state before it.
    previous: State,
    /// For an unknown operation: the unknown candidates it was chosen among.
    candidates: Vec<usize>,
}

/// Where the search is among the candidates of the current configuration: first the definite
/// operations invoked before the earliest pending response (a position in the definite entry
/// list), then the unknown candidates (an index into the configuration's candidate vector).
#[derive(Clone, Copy)]
enum Cursor {
    Definite(usize),
    Unknown(usize),
}

/// The operations of one key, in invocation order, with their slot in the definite or unknown
/// bitset.
struct KeyOps<'a> {
    ops: Vec<KOp<'a>>,
    slot: Vec<usize>,
}

impl KeyOps<'_> {
    fn in_prefix(&self, id: usize, definite: &Bitset, unknown: &Bitset) -> bool {
        if self.ops[id].definite {
            definite.get(self.slot[id])
        } else {
            unknown.get(self.slot[id])
        }
    }
}

/// The unknown operations of one key, grouped into effect classes: operations that have the
/// same effect on every state (after `canonicalize`). Among the pending members of a class that
/// are candidates (invoked no later than the earliest pending response), only one needs to be
/// tried (the latest-invoked, for determinism): all of them are already invoked, so from here on
/// any can take another's place in a completion.
struct Unknowns {
    /// For each operation id: its class (`NIL` for definite operations).
    class_of: Vec<usize>,
    /// Members of each class, in invocation order.
    members: Vec<Vec<usize>>,
    /// Number of members of each class not linearized yet.
    pending: Vec<usize>,
    /// The write and delete classes that still have pending members, ordered by the invocation
    /// of their first member (compare-and-swap classes are found through `cas_by_expect`
    /// instead, as they only matter while the register holds their `expect`).
    listed: EntryList,
    cas_by_expect: HashMap<Value, Vec<usize>>,
}

impl Unknowns {
    fn new(ops: &[KOp]) -> Unknowns {
        let mut index: HashMap<&Op, usize> = HashMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut class_of = vec![NIL; ops.len()];
        for (id, op) in ops.iter().enumerate() {
            if op.definite {
                continue;
            }
            let class = *index.entry(&op.op).or_insert_with(|| {
                members.push(Vec::new());
                members.len() - 1
            });
            class_of[id] = class;
            members[class].push(id);
        }
        let mut listed_entries = Vec::new();
        let mut cas_by_expect: HashMap<Value, Vec<usize>> = HashMap::new();
        for (class, ids) in members.iter().enumerate() {
            match &ops[ids[0]].op {
                Op::Cas { expect, .. } => cas_by_expect.entry(*expect).or_default().push(class),
                _ => listed_entries.push((ops[members[class][0]].invoke, 0, class)),
            }
        }
        Unknowns {
            class_of,
            pending: members.iter().map(Vec::len).collect(),
            listed: EntryList::new(listed_entries, members.len()),
            members,
            cas_by_expect,
        }
    }

    /// The latest-invoked pending member of `class` invoked no later than `boundary`.
    fn latest_pending(
        &self,
        class: usize,
        boundary: u64,
        ops: &[KOp],
        slot: &[usize],
        linearized: &Bitset,
    ) -> Option<usize> {
        let members = &self.members[class];
        let end = members.partition_point(|&id| ops[id].invoke <= boundary);
        members[..end]
            .iter()
            .rev()
            .copied()
            .find(|&id| !linearized.get(slot[id]))
    }

    /// The unknown operations worth trying in a configuration: one per effect class, and only
    /// those that would change the state (taking effect without changing it is never needed:
    /// leaving the operation pending is at least as permissive).
    fn candidates(
        &self,
        state: State,
        boundary: u64,
        ops: &[KOp],
        slot: &[usize],
        linearized: &Bitset,
    ) -> Vec<usize> {
        let mut classes = Vec::new();
        let mut node = self.listed.first();
        while node != NIL {
            let class = self.listed.node_op[node];
            if ops[self.members[class][0]].invoke > boundary {
                break;
            }
            classes.push(class);
            node = self.listed.next[node];
        }
        if let Some(cas) = state.and_then(|v| self.cas_by_expect.get(&v)) {
            classes.extend_from_slice(cas);
        }
        classes
            .into_iter()
            .filter_map(|class| self.latest_pending(class, boundary, ops, slot, linearized))
            .filter(|&id| {
                step(state, &ops[id].op, &ops[id].ev.outcome).is_some_and(|next| next != state)
            })
            .collect()
    }

    fn lift(&mut self, id: usize) {
        let class = self.class_of[id];
        self.pending[class] -= 1;
        if self.pending[class] == 0 && self.listed.nodes_of[class].0 != NIL {
            self.listed.lift(class);
        }
    }

    fn unlift(&mut self, id: usize) {
        let class = self.class_of[id];
        if self.pending[class] == 0 && self.listed.nodes_of[class].0 != NIL {
            self.listed.unlift(class);
        }
        self.pending[class] += 1;
    }
}

fn check_key(key: &str, events: &[&Event], budget: u64) -> KeyVerdict {
    // Unknown reads constrain nothing and change nothing.
    let mut ops: Vec<KOp> = events
        .iter()
        .filter(|ev| !(ev.op == Op::Read && ev.outcome == Outcome::Unknown))
        .map(|&ev| {
            let definite = ev.outcome != Outcome::Unknown;
            KOp {
                ev,
                op: ev.op.clone(),
                invoke: ev.invoke,
                complete: if definite {
                    ev.complete.max(ev.invoke)
                } else {
                    u64::MAX
                },
                definite,
            }
        })
        .collect();
    // Ids (and slots) follow invocation order (stable for equal times), which keeps linearized
    // sets dense at the low end and so the memo keys small.
    ops.sort_by_key(|op| (op.invoke, op.complete));

    if let Some(explanation) = precheck(key, &ops) {
        return KeyVerdict::Violation(explanation);
    }
    let opaque = canonicalize(&mut ops);

    let n = ops.len();
    let mut slot = vec![0; n];
    let (mut n_definite, mut n_unknown) = (0, 0);
    let mut definite_entries = Vec::new();
    for (id, op) in ops.iter().enumerate() {
        if op.definite {
            slot[id] = n_definite;
            n_definite += 1;
            definite_entries.push((op.invoke, 0, id));
            definite_entries.push((op.complete, 1, id));
        } else {
            slot[id] = n_unknown;
            n_unknown += 1;
        }
    }
    let mut unknowns = Unknowns::new(&ops);
    let key_ops = KeyOps { ops, slot };
    let ops = &key_ops.ops;
    let slot = &key_ops.slot;
    let mut definite_list = EntryList::new(definite_entries, n);
    let mut definite_set = Bitset::new(n_definite);
    let mut unknown_set = Bitset::new(n_unknown);
    let mut remaining_definite = n_definite;
    // Zobrist hash of the linearized definite set.
    let mut definite_hash: u64 = 0;

    let mut state: State = None;
    let mut stack: Vec<Frame> = Vec::new();
    let mut failed = FailedCache::default();
    let mut furthest: Option<Furthest> = None;
    let mut steps: u64 = 0;
    let mut cursor = Cursor::Definite(definite_list.first());
    // The unknown candidates of the current configuration (valid in the unknown phase).
    let mut candidates: Vec<usize> = Vec::new();

    loop {
        // Once every definite operation is placed, the remaining unknown ones can all be put at
        // +infinity, i.e. they never happened.
        if remaining_definite == 0 {
            return KeyVerdict::Linearizable;
        }
        steps += 1;
        if steps > budget {
            return KeyVerdict::Undecided;
        }
        match cursor {
            Cursor::Definite(node) if node != NIL && definite_list.is_call[node] => {
                cursor = Cursor::Definite(definite_list.next[node]);
                let id = definite_list.node_op[node];
                let op = &ops[id];
                let Some(new_state) = step(state, &op.op, &op.ev.outcome) else {
                    continue;
                };
                let new_hash = definite_hash ^ slot_hash(slot[id]);
                definite_set.set(slot[id]);
                let hash = new_hash ^ state_hash(new_state);
                if failed.covers(hash, &definite_set, &unknown_set, new_state) {
                    definite_set.clear(slot[id]);
                    continue;
                }
                definite_hash = new_hash;
                stack.push(Frame {
                    id,
                    previous: state,
                    candidates: Vec::new(),
                });
                state = new_state;
                definite_list.lift(id);
                remaining_definite -= 1;
                cursor = Cursor::Definite(definite_list.first());
            }
            Cursor::Definite(node) => {
                // The earliest pending response (or, defensively, the end of the list): its
                // operation must be linearized before anything invoked later, so only unknown
                // operations invoked no later than that can still help.
                let boundary = if node == NIL {
                    u64::MAX
                } else {
                    let id = definite_list.node_op[node];
                    if furthest.as_ref().is_none_or(|f| stack.len() > f.depth) {
                        furthest = Some(Furthest {
                            depth: stack.len(),
                            blocked: id,
                            state: real_state(state, opaque, &stack, ops),
                            definite: definite_set.clone(),
                            unknown: unknown_set.clone(),
                            recent: stack.iter().rev().take(4).rev().map(|f| f.id).collect(),
                        });
                    }
                    ops[id].complete
                };
                candidates = unknowns.candidates(state, boundary, ops, slot, &unknown_set);
                steps += candidates.len() as u64;
                cursor = Cursor::Unknown(0);
            }
            Cursor::Unknown(index) if index < candidates.len() => {
                cursor = Cursor::Unknown(index + 1);
                let id = candidates[index];
                let op = &ops[id];
                let Some(new_state) = step(state, &op.op, &op.ev.outcome) else {
                    continue;
                };
                unknown_set.set(slot[id]);
                let hash = definite_hash ^ state_hash(new_state);
                if failed.covers(hash, &definite_set, &unknown_set, new_state) {
                    unknown_set.clear(slot[id]);
                    continue;
                }
                stack.push(Frame {
                    id,
                    previous: state,
                    candidates: std::mem::take(&mut candidates),
                });
                state = new_state;
                unknowns.lift(id);
                cursor = Cursor::Definite(definite_list.first());
            }
            Cursor::Unknown(_) => {
                // Every candidate of this configuration failed.
                let hash = definite_hash ^ state_hash(state);
                failed.insert(hash, &definite_set, &unknown_set, state);
                let Some(frame) = stack.pop() else {
                    let explanation = match &furthest {
                        Some(f) => explain_dead_end(key, &key_ops, f),
                        None => format!("key {key:?}: no linearization exists"),
                    };
                    return KeyVerdict::Violation(explanation);
                };
                state = frame.previous;
                let id = frame.id;
                if ops[id].definite {
                    definite_set.clear(slot[id]);
                    definite_hash ^= slot_hash(slot[id]);
                    definite_list.unlift(id);
                    remaining_definite += 1;
                    cursor = Cursor::Definite(definite_list.next[definite_list.nodes_of[id].0]);
                } else {
                    unknown_set.clear(slot[id]);
                    unknowns.unlift(id);
                    candidates = frame.candidates;
                    let position = candidates.iter().position(|&c| c == id);
                    cursor = Cursor::Unknown(position.map_or(candidates.len(), |p| p + 1));
                }
            }
        }
    }
}

/// `state` with the opaque value replaced by the value actually written, found from the operation
/// on the stack that last changed the state.
fn real_state(state: State, opaque: Value, stack: &[Frame], ops: &[KOp]) -> State {
    if state != Some(opaque) {
        return state;
    }
    let writer = stack.iter().rev().find(|f| f.previous != state);
    match writer.map(|f| &ops[f.id].ev.op) {
        Some(Op::Write(v)) | Some(Op::Cas { new: v, .. }) => Some(*v),
        _ => state,
    }
}

/// Replaces every written value that is never observed (never returned by a definite read, never
/// the `expect` of a compare-and-swap) by one opaque value, and returns that value. The model
/// cannot tell such values apart: no read or successful CAS accepts them, every failed CAS and
/// every delete treats them alike. Merging them shrinks the state space the search explores.
fn canonicalize(ops: &mut [KOp]) -> Value {
    let mut observed: HashSet<Value> = HashSet::new();
    for op in ops.iter() {
        match (&op.op, &op.ev.outcome) {
            (Op::Read, Outcome::Read(Some(v))) => {
                observed.insert(*v);
            }
            (Op::Cas { expect, .. }, _) => {
                observed.insert(*expect);
            }
            _ => {}
        }
    }
    let opaque = (0..=u64::MAX)
        .rev()
        .find(|v| !observed.contains(v))
        .expect("fewer than 2^64 observed values");
    let canon = |v: Value| if observed.contains(&v) { v } else { opaque };
    for op in ops.iter_mut() {
        match &mut op.op {
            Op::Write(v) => *v = canon(*v),
            Op::Cas { new, .. } => *new = canon(*new),
            Op::Read | Op::Delete => {}
        }
    }
    opaque
}

/// Cheap checks that give a clearer explanation than the search would: a definite read (or
/// successful compare-and-swap) of a value that no operation on this key could have written by
/// the time it completed.
fn precheck(key: &str, ops: &[KOp]) -> Option<String> {
    // value -> earliest invocation of an operation that may have written it
    let mut writers: HashMap<Value, u64> = HashMap::new();
    for op in ops {
        let written = match (&op.ev.op, &op.ev.outcome) {
            (Op::Write(v), Outcome::Ok | Outcome::Unknown) => Some(*v),
            (Op::Cas { new, .. }, Outcome::Ok | Outcome::Unknown) => Some(*new),
            _ => None,
        };
        if let Some(v) = written {
            let earliest = writers.entry(v).or_insert(op.invoke);
            *earliest = (*earliest).min(op.invoke);
        }
    }
    for (id, op) in ops.iter().enumerate() {
        let needed = match (&op.ev.op, &op.ev.outcome) {
            (Op::Read, Outcome::Read(Some(v))) => Some(*v),
            (Op::Cas { expect, .. }, Outcome::Ok) => Some(*expect),
            _ => None,
        };
        let Some(v) = needed else { continue };
        let possible = writers.get(&v).is_some_and(|&t| t <= op.complete);
        if !possible {
            let mut out = String::new();
            let _ = writeln!(
                out,
                "key {key:?}: client {} observed value {v} ({}), but no operation on this key \
                 wrote {v} before that operation completed.",
                op.ev.client,
                describe(op.ev),
            );
            write_window(&mut out, ops, id, None);
            return Some(out);
        }
    }
    None
}

fn explain_dead_end(key: &str, key_ops: &KeyOps, f: &Furthest) -> String {
    let ops = &key_ops.ops;
    let blocked = &ops[f.blocked];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "key {key:?}: no linearization exists. The search got furthest with {} of {} operations \
         linearized (register then {}); from there, no pending operation could be placed so that \
         this one takes effect before it returns:",
        f.depth,
        ops.len(),
        show_state(f.state),
    );
    let _ = writeln!(out, "   {}", line(blocked));
    let observed = match (&blocked.ev.op, &blocked.ev.outcome) {
        (Op::Read, Outcome::Read(Some(v))) => Some(*v),
        (Op::Cas { expect, .. }, Outcome::Ok) => Some(*expect),
        _ => None,
    };
    if let Some(v) = observed {
        for op in ops.iter() {
            if let Op::Write(w) | Op::Cas { new: w, .. } = op.ev.op
                && w == v
                && op.ev.outcome != Outcome::CasFailed
            {
                let _ = writeln!(out, "Value {v} was written by:\n   {}", line(op));
            }
        }
    }
    if !f.recent.is_empty() {
        let _ = writeln!(
            out,
            "Last operations of that prefix, in linearization order:"
        );
        for &id in &f.recent {
            let _ = writeln!(out, "   {}", line(&ops[id]));
        }
    }
    let in_prefix = |id: usize| key_ops.in_prefix(id, &f.definite, &f.unknown);
    write_window(&mut out, ops, f.blocked, Some(&in_prefix));
    out
}

/// Appends the operations around `center`: those that completed just before it was invoked and
/// those concurrent with it, sorted by invocation.
fn write_window(
    out: &mut String,
    ops: &[KOp],
    center: usize,
    prefix: Option<&dyn Fn(usize) -> bool>,
) {
    const PREDECESSORS: usize = 4;
    const MAX_LINES: usize = 40;
    let c = &ops[center];

    // The few definite operations that completed most recently before `center` was invoked.
    let mut preds: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].definite && ops[i].complete < c.invoke)
        .collect();
    preds.sort_by_key(|&i| std::cmp::Reverse(ops[i].complete));
    preds.truncate(PREDECESSORS);
    let lo = preds
        .iter()
        .map(|&i| ops[i].invoke)
        .fold(c.invoke, u64::min);
    let hi = c.complete;

    let mut shown: Vec<usize> = Vec::new();
    let mut old_pending = 0usize;
    for (i, op) in ops.iter().enumerate() {
        if op.invoke > hi || op.complete < lo {
            continue;
        }
        if !op.definite && op.invoke < lo {
            old_pending += 1;
            continue;
        }
        shown.push(i);
    }
    let mut omitted = 0;
    if shown.len() > MAX_LINES {
        // Keep the center and the operations invoked closest to it.
        shown.sort_by_key(|&i| ops[i].invoke.abs_diff(c.invoke));
        omitted = shown.len() - MAX_LINES;
        shown.truncate(MAX_LINES);
        shown.sort_unstable();
    }

    let _ = writeln!(
        out,
        "Operations of this key around that point (by invocation; '>>' = that operation{}):",
        if prefix.is_some() {
            ", '*' = in the furthest linearized prefix"
        } else {
            ""
        },
    );
    for i in shown {
        let mark = if i == center {
            ">>"
        } else if prefix.is_some_and(|in_prefix| in_prefix(i)) {
            "* "
        } else {
            "  "
        };
        let _ = writeln!(out, "{mark} {}", line(&ops[i]));
    }
    if omitted > 0 {
        let _ = writeln!(
            out,
            "   ... and {omitted} more concurrent operations not shown"
        );
    }
    if old_pending > 0 {
        let _ = writeln!(
            out,
            "   (plus {old_pending} earlier operations with unknown outcome, still possibly \
             pending, not shown)"
        );
    }
}

fn line(op: &KOp) -> String {
    let end = if op.definite {
        fmt_time(op.complete)
    } else {
        "?".to_string()
    };
    format!(
        "client {:<3} [{} .. {}] {}",
        op.ev.client,
        fmt_time(op.invoke),
        end,
        describe(op.ev)
    )
}

fn fmt_time(ns: u64) -> String {
    format!("{}.{:09}s", ns / 1_000_000_000, ns % 1_000_000_000)
}

fn show_state(state: State) -> String {
    match state {
        Some(v) => format!("holds {v}"),
        None => "absent".to_string(),
    }
}

fn describe(ev: &Event) -> String {
    let op = match &ev.op {
        Op::Read => "read".to_string(),
        Op::Write(v) => format!("write {v}"),
        Op::Delete => "delete".to_string(),
        Op::Cas { expect, new } => format!("cas {expect} -> {new}"),
    };
    let outcome = match &ev.outcome {
        Outcome::Read(Some(v)) => format!("{v}"),
        Outcome::Read(None) => "not found".to_string(),
        Outcome::Ok => "ok".to_string(),
        Outcome::Deleted(true) => "deleted".to_string(),
        Outcome::Deleted(false) => "not found".to_string(),
        Outcome::CasFailed => "failed (412)".to_string(),
        Outcome::Unknown => "unknown".to_string(),
    };
    format!("{op} => {outcome}")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const BUDGET: u64 = 1_000_000;

    fn ev(key: &str, client: usize, op: Op, outcome: Outcome, invoke: u64, complete: u64) -> Event {
        Event {
            key: key.to_string(),
            client,
            op,
            outcome,
            invoke,
            complete,
        }
    }
    fn w(client: usize, v: Value, invoke: u64, complete: u64) -> Event {
        ev("k", client, Op::Write(v), Outcome::Ok, invoke, complete)
    }
    fn r(client: usize, v: Option<Value>, invoke: u64, complete: u64) -> Event {
        ev("k", client, Op::Read, Outcome::Read(v), invoke, complete)
    }
    fn del(client: usize, existed: bool, invoke: u64, complete: u64) -> Event {
        ev(
            "k",
            client,
            Op::Delete,
            Outcome::Deleted(existed),
            invoke,
            complete,
        )
    }
    fn cas(client: usize, expect: Value, new: Value, outcome: Outcome, i: u64, c: u64) -> Event {
        ev("k", client, Op::Cas { expect, new }, outcome, i, c)
    }
    fn unknown(mut e: Event) -> Event {
        e.outcome = Outcome::Unknown;
        e.complete = 0; // ignored
        e
    }

    fn assert_ok(history: &[Event]) {
        let report = check(history, BUDGET);
        assert!(report.linearizable, "expected linearizable: {report:#?}");
        assert!(report.violation.is_none() && report.undecided.is_empty());
    }
    fn assert_violation(history: &[Event]) -> (String, String) {
        let report = check(history, BUDGET);
        assert!(!report.linearizable, "expected a violation: {report:#?}");
        assert!(report.undecided.is_empty(), "{report:#?}");
        report.violation.expect("violation expected")
    }

    #[test]
    fn empty_history() {
        let report = check(&[], 10);
        assert_eq!(
            report,
            Report {
                keys: 0,
                ops: 0,
                linearizable: true,
                undecided: vec![],
                violation: None
            }
        );
    }

    #[test]
    fn sequential_write_read_ok() {
        assert_ok(&[
            r(0, None, 0, 5),
            w(0, 1, 10, 20),
            r(1, Some(1), 30, 40),
            w(1, 2, 50, 60),
            r(0, Some(2), 70, 80),
            del(0, true, 90, 95),
            r(1, None, 100, 110),
        ]);
    }

    #[test]
    fn concurrent_writes_reads_see_either_order() {
        // Writes 1 and 2 overlap; readers may see them in either order, as long as they agree.
        assert_ok(&[
            w(0, 1, 0, 100),
            w(1, 2, 10, 90),
            r(2, Some(1), 20, 30),
            r(3, Some(2), 40, 50),
            r(2, Some(2), 120, 130),
        ]);
        assert_ok(&[
            w(0, 1, 0, 100),
            w(1, 2, 10, 90),
            r(2, Some(2), 20, 30),
            r(3, Some(1), 40, 50),
            r(2, Some(1), 120, 130),
        ]);
        // ...but after both completed, everyone agrees on the final value.
        assert_violation(&[
            w(0, 1, 0, 100),
            w(1, 2, 10, 90),
            r(2, Some(2), 120, 130),
            r(3, Some(1), 140, 150),
        ]);
    }

    #[test]
    fn touching_intervals_are_concurrent() {
        // The read is invoked at the very instant the write completes: they are concurrent, so
        // the read may still see the initial state.
        assert_ok(&[w(0, 1, 0, 10), r(1, None, 10, 20)]);
        // One nanosecond later it may not.
        assert_violation(&[w(0, 1, 0, 10), r(1, None, 11, 20)]);
    }

    #[test]
    fn stale_read_not_linearizable() {
        let history = [
            w(0, 1, 0, 10),
            w(1, 2, 20, 30),
            r(2, Some(1), 40, 50),
            w(0, 3, 60, 70),
        ];
        let (key, explanation) = assert_violation(&history);
        assert_eq!(key, "k");
        assert!(
            explanation.contains("client 2   [0.000000040s .. 0.000000050s] read => 1"),
            "{explanation}"
        );
        assert!(
            explanation.contains("register then holds 2"),
            "{explanation}"
        );
        assert!(
            explanation.contains(
                "Value 1 was written by:\n   client 0   [0.000000000s .. 0.000000010s] write 1 => ok"
            ),
            "{explanation}"
        );
        // The write after the failing point is outside the window.
        assert!(!explanation.contains("write 3"), "{explanation}");
    }

    #[test]
    fn read_of_unwritten_value_not_linearizable() {
        let (key, explanation) =
            assert_violation(&[w(0, 1, 0, 10), r(1, Some(7), 20, 30), w(0, 2, 40, 50)]);
        assert_eq!(key, "k");
        assert!(
            explanation.contains("no operation on this key wrote 7"),
            "{explanation}"
        );
        // Read of a value whose only writer was invoked after the read completed.
        assert_violation(&[r(1, Some(7), 20, 30), w(0, 7, 40, 50)]);
        // A failed CAS does not write its `new`.
        assert_violation(&[
            w(0, 1, 0, 10),
            cas(0, 5, 6, Outcome::CasFailed, 20, 30),
            r(1, Some(6), 40, 50),
        ]);
        // A read of an absent key before anything is written is fine; after a write it is not.
        assert_ok(&[r(0, None, 0, 10), w(0, 1, 20, 30)]);
        assert_violation(&[w(0, 1, 0, 10), r(1, None, 20, 30)]);
    }

    #[test]
    fn unknown_write_later_seen_ok() {
        assert_ok(&[
            w(0, 1, 0, 10),
            unknown(w(1, 2, 20, 0)),
            r(2, Some(1), 30, 40),
            r(2, Some(2), 1_000, 1_010),
            r(3, Some(2), 2_000, 2_010),
        ]);
        // It may not take effect before it was invoked.
        assert_violation(&[
            w(0, 1, 0, 10),
            r(2, Some(2), 20, 30),
            unknown(w(1, 2, 40, 0)),
        ]);
    }

    #[test]
    fn unknown_write_never_seen_ok() {
        assert_ok(&[
            w(0, 1, 0, 10),
            unknown(w(1, 2, 20, 0)),
            r(2, Some(1), 30, 40),
            r(2, Some(1), 1_000, 1_010),
            unknown(del(3, false, 1_100, 0)),
            unknown(cas(3, 1, 5, Outcome::Ok, 1_200, 0)),
            unknown(r(0, Some(99), 1_300, 0)),
            r(3, Some(1), 2_000, 2_010),
        ]);
    }

    #[test]
    fn unknown_write_cannot_flicker() {
        // Once seen, an unknown write's effect cannot disappear again without another write.
        assert_violation(&[
            w(0, 1, 0, 10),
            unknown(w(1, 2, 20, 0)),
            r(2, Some(2), 30, 40),
            r(2, Some(1), 50, 60),
        ]);
    }

    #[test]
    fn non_monotonic_read_not_linearizable() {
        let (_, explanation) = assert_violation(&[
            w(0, 1, 0, 10),
            w(1, 2, 20, 200),
            r(2, Some(2), 30, 40),
            r(3, Some(1), 50, 60),
        ]);
        assert!(explanation.contains(">> client 3"), "{explanation}");
        // The same reads overlapping each other are fine.
        assert_ok(&[
            w(0, 1, 0, 10),
            w(1, 2, 20, 200),
            r(2, Some(2), 30, 60),
            r(3, Some(1), 50, 70),
        ]);
    }

    #[test]
    fn cas_cases() {
        // Sequential success and failure.
        assert_ok(&[
            w(0, 1, 0, 10),
            cas(1, 1, 2, Outcome::Ok, 20, 30),
            cas(2, 1, 3, Outcome::CasFailed, 40, 50),
            r(0, Some(2), 60, 70),
        ]);
        // Two concurrent CAS with the same `expect` cannot both succeed.
        assert_violation(&[
            w(0, 1, 0, 10),
            cas(1, 1, 2, Outcome::Ok, 20, 50),
            cas(2, 1, 3, Outcome::Ok, 25, 45),
        ]);
        // One succeeds, the other fails: fine, whichever order the reads need.
        assert_ok(&[
            w(0, 1, 0, 10),
            cas(1, 1, 2, Outcome::Ok, 20, 50),
            cas(2, 1, 3, Outcome::CasFailed, 25, 45),
            r(0, Some(2), 60, 70),
        ]);
        // A failed CAS when the value was certainly `expect` is a violation.
        assert_violation(&[w(0, 1, 0, 10), cas(2, 1, 3, Outcome::CasFailed, 20, 30)]);
        // CAS on an absent key fails.
        assert_ok(&[cas(2, 1, 3, Outcome::CasFailed, 20, 30)]);
        // An unknown CAS may have swapped...
        assert_ok(&[
            w(0, 1, 0, 10),
            unknown(cas(1, 1, 2, Outcome::Ok, 20, 0)),
            r(0, Some(2), 60, 70),
        ]);
        // ...but only if the value was `expect` at some point after its invocation.
        assert_violation(&[
            w(0, 1, 0, 10),
            w(0, 5, 12, 15),
            unknown(cas(1, 1, 2, Outcome::Ok, 20, 0)),
            r(0, Some(2), 60, 70),
        ]);
    }

    #[test]
    fn delete_outcomes() {
        assert_ok(&[
            del(0, false, 0, 10),
            w(0, 1, 20, 30),
            del(1, true, 40, 50),
            del(1, false, 60, 70),
            r(2, None, 80, 90),
        ]);
        // Deleted an existing key although it was absent.
        assert_violation(&[del(0, true, 0, 10)]);
        assert_violation(&[w(0, 1, 0, 10), del(1, true, 20, 30), del(1, true, 40, 50)]);
        // "Not found" although the key existed.
        assert_violation(&[w(0, 1, 0, 10), del(1, false, 20, 30)]);
        // Concurrent with the write, either answer works.
        assert_ok(&[w(0, 1, 0, 30), del(1, false, 10, 20), r(2, Some(1), 40, 50)]);
        assert_ok(&[w(0, 1, 0, 30), del(1, true, 10, 20), r(2, None, 40, 50)]);
        // An unknown delete may remove the value.
        assert_ok(&[
            w(0, 1, 0, 10),
            unknown(del(1, true, 20, 0)),
            r(2, None, 40, 50),
        ]);
    }

    #[test]
    fn keys_checked_independently() {
        let mut history = vec![
            ev("a", 0, Op::Write(1), Outcome::Ok, 0, 10),
            ev("b", 1, Op::Write(2), Outcome::Ok, 0, 10),
            ev("c", 2, Op::Write(3), Outcome::Ok, 0, 10),
            ev("a", 0, Op::Read, Outcome::Read(Some(1)), 20, 30),
            // Key "b" is read as absent after its write completed.
            ev("b", 1, Op::Read, Outcome::Read(None), 20, 30),
            ev("c", 2, Op::Read, Outcome::Read(Some(3)), 20, 30),
            ev("c", 2, Op::Read, Outcome::Read(Some(3)), 40, 50),
        ];
        let report = check(&history, BUDGET);
        assert_eq!(report.keys, 3);
        assert_eq!(report.ops, 7);
        assert!(!report.linearizable);
        let (key, explanation) = report.violation.expect("violation on b");
        assert_eq!(key, "b");
        assert!(explanation.contains("key \"b\""), "{explanation}");
        assert!(!explanation.contains("write 1"), "{explanation}");

        // Values interleaved across keys do not interact: reading key a's value 1 is fine on a
        // and not on c.
        history.truncate(3);
        history.push(ev("a", 0, Op::Read, Outcome::Read(Some(1)), 20, 30));
        assert_ok(&history);
        history.push(ev("c", 0, Op::Read, Outcome::Read(Some(1)), 20, 30));
        assert_eq!(assert_violation(&history).0, "c");
    }

    /// Many fully concurrent writes, then two sequential reads that disagree: refuting this
    /// requires exploring every subset of the writes.
    fn wide_history(writes: u64) -> Vec<Event> {
        let mut history: Vec<Event> = (0..writes)
            .map(|i| w(i as usize, i + 1, i, 1_000 + i))
            .collect();
        history.push(r(100, Some(1), 2_000, 2_100));
        history.push(r(101, Some(2), 2_200, 2_300));
        history
    }

    #[test]
    fn budget_gives_undecided() {
        let history = wide_history(24);
        let start = Instant::now();
        let report = check(&history, 1_000);
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(report.undecided, vec!["k".to_string()]);
        assert!(report.violation.is_none());
        assert!(!report.linearizable);
        // With a large enough budget a smaller instance is refuted.
        let (key, explanation) = assert_violation(&wide_history(8));
        assert_eq!(key, "k");
        assert!(explanation.contains(">> client 101"), "{explanation}");
    }

    // --- Random histories -----------------------------------------------------------------

    /// splitmix64
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// A linearizable history of one register: `clients` clients issue `total` operations with
    /// random, overlapping intervals; each operation takes effect at a random point strictly
    /// inside its interval, and outcomes are computed by applying the operations in that order.
    /// `unknown_percent` of the operations get an unknown outcome (half of those never take
    /// effect).
    fn random_linearizable_history(
        seed: u64,
        clients: usize,
        total: usize,
        unknown_percent: u64,
    ) -> Vec<Event> {
        let mut rng = Rng(seed);
        // (linearization point, client, invoke, complete)
        let mut slots: Vec<(u64, usize, u64, u64)> = Vec::with_capacity(total);
        let mut cursor = vec![0u64; clients];
        for i in 0..total {
            let client = i % clients;
            let invoke = cursor[client] + rng.below(50);
            let point = invoke + 1 + rng.below(300);
            let complete = point + 1 + rng.below(300);
            cursor[client] = complete + 1;
            slots.push((point, client, invoke, complete));
        }
        slots.sort_unstable();

        let mut state: State = None;
        let mut written: Vec<Value> = Vec::new();
        let mut next_value: Value = 1;
        let mut history = Vec::with_capacity(total);
        for (_, client, invoke, complete) in slots {
            let roll = rng.below(100);
            let takes_effect_if_unknown = rng.chance(50);
            let is_unknown = rng.chance(unknown_percent);
            let (op, mut outcome) = if roll < 40 {
                (Op::Read, Outcome::Read(state))
            } else if roll < 70 {
                let v = next_value;
                next_value += 1;
                (Op::Write(v), Outcome::Ok)
            } else if roll < 85 {
                let new = next_value;
                next_value += 1;
                let expect = match state {
                    Some(v) if rng.chance(60) => v,
                    _ if !written.is_empty() => written[rng.below(written.len() as u64) as usize],
                    _ => 0,
                };
                let outcome = if state == Some(expect) {
                    Outcome::Ok
                } else {
                    Outcome::CasFailed
                };
                (Op::Cas { expect, new }, outcome)
            } else {
                (Op::Delete, Outcome::Deleted(state.is_some()))
            };
            if is_unknown {
                outcome = Outcome::Unknown;
            }
            if !is_unknown || takes_effect_if_unknown {
                state = step(state, &op, &outcome).expect("generator follows the model");
                if let Op::Write(v) | Op::Cas { new: v, .. } = op {
                    written.push(v);
                }
            }
            history.push(ev("k", client, op, outcome, invoke, complete));
        }
        history.sort_by_key(|e| e.invoke);
        history
    }

    #[test]
    fn random_linearizable_histories_small() {
        for seed in 0..300 {
            let clients = 1 + (seed as usize % 6);
            let history = random_linearizable_history(seed, clients, 60, seed % 4 * 10);
            let report = check(&history, BUDGET);
            assert!(report.linearizable, "seed {seed}: {report:#?}");
        }
    }

    #[test]
    fn performance_random_linearizable_5000_ops() {
        let history = random_linearizable_history(42, 8, 5_000, 2);
        let start = Instant::now();
        let report = check(&history, 10_000_000);
        let elapsed = start.elapsed();
        eprintln!(
            "checked {} ops with 8 clients in {elapsed:?}",
            history.len()
        );
        assert!(report.linearizable, "{report:#?}");
        assert_eq!(report.ops, 5_000);
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    }

    #[test]
    fn random_history_with_injected_stale_read() {
        // Take a large linearizable history and make one read return a value that was written,
        // then overwritten by a definite write that completed before the read was invoked.
        let mut history = random_linearizable_history(7, 8, 2_000, 1);
        let is_effective = |e: &Event| {
            matches!(
                (&e.op, &e.outcome),
                (Op::Write(_), Outcome::Ok)
                    | (Op::Cas { .. }, Outcome::Ok)
                    | (Op::Delete, Outcome::Deleted(_))
            )
        };
        let mut injected = None;
        'search: for ri in (history.len() / 2)..history.len() {
            if !matches!(history[ri].outcome, Outcome::Read(_)) {
                continue;
            }
            for wi in 0..ri {
                let Op::Write(v) = history[wi].op else {
                    continue;
                };
                if history[wi].outcome != Outcome::Ok
                    || history[wi].complete + 2_000 > history[ri].invoke
                {
                    continue;
                }
                let overwritten = history.iter().any(|o| {
                    is_effective(o)
                        && history[wi].complete < o.invoke
                        && o.complete < history[ri].invoke
                });
                if overwritten && history[ri].outcome != Outcome::Read(Some(v)) {
                    injected = Some((ri, v));
                    break 'search;
                }
            }
        }
        let (ri, v) = injected.expect("a read to corrupt");
        history[ri].outcome = Outcome::Read(Some(v));
        let start = Instant::now();
        let report = check(&history, 10_000_000);
        eprintln!("refuted a 2000-op history in {:?}", start.elapsed());
        assert!(report.undecided.is_empty(), "{report:#?}");
        let (key, explanation) = report.violation.expect("stale read detected");
        assert_eq!(key, "k");
        assert!(explanation.lines().count() < 60, "{explanation}");
    }

    /// Reference implementation: tries every order of the operations consistent with real time
    /// (unknown operations have no completion, and putting one last stands for "never").
    fn brute_force_linearizable(history: &[Event]) -> bool {
        fn complete(e: &Event) -> u64 {
            if e.outcome == Outcome::Unknown {
                u64::MAX
            } else {
                e.complete
            }
        }
        fn search(history: &[Event], done: &mut [bool], state: State) -> bool {
            if done.iter().all(|&d| d) {
                return true;
            }
            for i in 0..history.len() {
                if done[i] {
                    continue;
                }
                // Some pending operation must come first.
                let blocked = (0..history.len())
                    .any(|j| !done[j] && j != i && complete(&history[j]) < history[i].invoke);
                if blocked {
                    continue;
                }
                if let Some(next) = step(state, &history[i].op, &history[i].outcome) {
                    done[i] = true;
                    if search(history, done, next) {
                        return true;
                    }
                    done[i] = false;
                }
            }
            false
        }
        search(history, &mut vec![false; history.len()], None)
    }

    /// Small random histories with arbitrary (mostly impossible) outcomes, unknown outcomes and
    /// heavily overlapping intervals.
    fn random_small_history(rng: &mut Rng, len: usize) -> Vec<Event> {
        let mut history = Vec::new();
        let mut written: Vec<Value> = Vec::new();
        for i in 0..len {
            let invoke = rng.below(40);
            let complete = invoke + rng.below(30);
            let pick = |rng: &mut Rng, written: &[Value]| -> Option<Value> {
                if written.is_empty() || rng.chance(25) {
                    None
                } else {
                    Some(written[rng.below(written.len() as u64) as usize])
                }
            };
            let (op, outcome) = match rng.below(4) {
                0 => (Op::Read, Outcome::Read(pick(rng, &written))),
                1 => {
                    written.push(i as Value + 1);
                    (Op::Write(i as Value + 1), Outcome::Ok)
                }
                2 => (Op::Delete, Outcome::Deleted(rng.chance(50))),
                _ => {
                    let expect = pick(rng, &written).unwrap_or(1000);
                    written.push(i as Value + 1);
                    let outcome = if rng.chance(50) {
                        Outcome::Ok
                    } else {
                        Outcome::CasFailed
                    };
                    (
                        Op::Cas {
                            expect,
                            new: i as Value + 1,
                        },
                        outcome,
                    )
                }
            };
            let outcome = if rng.chance(25) {
                Outcome::Unknown
            } else {
                outcome
            };
            history.push(ev("k", i, op, outcome, invoke, complete));
        }
        history
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let mut rng = Rng(2024);
        let (mut linearizable, mut not) = (0, 0);
        for round in 0..4_000 {
            let history = random_small_history(&mut rng, 2 + round % 6);
            let expected = brute_force_linearizable(&history);
            let report = check(&history, BUDGET);
            assert!(report.undecided.is_empty());
            assert_eq!(
                report.linearizable, expected,
                "round {round}: {history:#?}\n{report:#?}"
            );
            if expected {
                linearizable += 1;
            } else {
                not += 1;
            }
        }
        // Both verdicts are well represented.
        assert!(linearizable > 500 && not > 500, "{linearizable} / {not}");
    }
}
