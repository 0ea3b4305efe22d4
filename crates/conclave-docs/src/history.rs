//! Versions of a document: its whole state as one update, and the update
//! that brings a document back to a saved version.
//!
//! A CRDT cannot go back in time, so restoring is new operations: the
//! update that [`restore_update`] makes deletes what was added since the version
//! and inserts again, as new items, what was removed. Every peer that
//! applies it (the room, the editors, other nodes) then reads the version's
//! content, and concurrent edits merge with it as with any other edit.
//!
//! Nothing here reads a clock or a disk; both functions take v1 updates and
//! return v1 updates.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use yrs::branch::{Branch, BranchPtr};
use yrs::types::text::{Diff, YChange};
use yrs::types::xml::{XmlDeltaPrelim, XmlIn, XmlOut};
use yrs::types::{AsPrelim, Attrs, Delta};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayPrelim, ArrayRef, BranchID, ClientID, Doc, In, Map, MapPrelim, MapRef,
    Options, Out, ReadTxn, StateVector, Text, TextRef, Transact, TransactionMut, Update, WriteTxn,
    Xml, XmlElementPrelim, XmlFragment, XmlFragmentPrelim,
};

use crate::DocError;

/// Client ids are at most 53 bits (JavaScript's safe integers).
const CLIENT_ID_LIMIT: u64 = 1 << 53;

/// The client id of documents that are only read here. They never write,
/// so the id never appears in a document.
const READER_CLIENT_ID: u64 = 0;

/// The whole document as one v1 update: `snapshot` (a v1 update of the
/// whole state, if any) and the `updates` after it, oldest first, the way
/// storage returns them. The result is what a version stores (and what a
/// snapshot would be); like [`Room::load`](crate::Room::load), nothing is
/// added to the document on the way (formatting cleanup is off).
///
/// A snapshot or update that does not decode or apply is
/// [`DocError::Corrupt`].
pub fn merged_state<'a>(
    snapshot: Option<&'a [u8]>,
    updates: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, DocError> {
    guarded(move || {
        let doc = reader();
        for bytes in snapshot.into_iter().chain(updates) {
            apply(&doc, bytes)?;
        }
        Ok(doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default()))
    })
}

/// One v1 update which, applied to the document whose whole state is
/// `current`, makes every root-level shared type read exactly like it does
/// in `version` (a whole state too, from [`merged_state`]): the same text
/// with the same formatting, the same map entries, array items and XML
/// trees (tags, attributes with their types, text), nested shared types
/// included. Roots the version does not have are emptied.
///
/// The restore is new content, not history: a root (and a root map's
/// entry) whose content differs is emptied and its content from the version
/// inserted again; an array or XML fragment keeps the items both share at
/// its start and end. Roots and root entries that already read like the
/// version are left alone, so restoring a document that reads like the
/// version gives an update that changes nothing (`[0, 0]`).
///
/// `restorer_client_id` is the Yjs client id of the new items. It must be
/// a valid client id (1 to 2^53 - 1) that `current` has never used:
/// a fresh random one per restore, as a Yjs client picks one per session.
/// Not the room's own (0, which must never appear in a document, see
/// [`Room`](crate::Room)), and not a fixed one either: two restores
/// computed from the same state with the same id would make different items
/// with the same ids, and peers would diverge. Using an id `current`
/// already has is refused ([`DocError::Malformed`]) rather than risked.
///
/// `current` must be the document's latest state, read under the
/// document's lock: what is missing from it is not undone. A state that
/// does not decode or apply is [`DocError::Corrupt`].
pub fn restore_update(
    current: &[u8],
    version: &[u8],
    restorer_client_id: u64,
) -> Result<Vec<u8>, DocError> {
    if restorer_client_id == READER_CLIENT_ID || restorer_client_id >= CLIENT_ID_LIMIT {
        return Err(DocError::Malformed(
            "a restorer client id is between 1 and 2^53 - 1",
        ));
    }
    guarded(move || {
        let past = reader();
        apply(&past, version)?;
        // The document as the peers have it, with the restorer's id. No
        // formatting cleanup: the update holds exactly the edits below.
        let doc = Doc::with_options(Options {
            cleanup_formatting: false,
            ..Options::with_client_id(ClientID::new(restorer_client_id))
        });
        apply(&doc, current)?;
        if doc
            .transact()
            .state_vector()
            .contains_client(&ClientID::new(restorer_client_id))
        {
            return Err(DocError::Malformed(
                "the restorer client id is in use in the document",
            ));
        }
        let source = past.transact();
        let mut txn = doc.transact_mut();
        let names: BTreeSet<String> = root_names(&source)
            .into_iter()
            .chain(root_names(&txn))
            .collect();
        for name in names {
            let from = BranchID::get_root(&source, name.as_str());
            let wanted = from.map_or_else(RootShape::default, |root| root_shape(&source, root));
            let target = BranchID::get_root(&txn, name.as_str());
            let current = target.map_or_else(RootShape::default, |root| root_shape(&txn, root));
            if wanted == current {
                continue;
            }
            match (from, target) {
                (None, None) => {}
                // Nothing to bring back: empty what is there.
                (None, Some(target)) => {
                    restore_root(&mut txn, &source, None, target, &current, &wanted);
                }
                (Some(from), target) => {
                    let target = target.unwrap_or_else(|| create_root(&mut txn, &name, &wanted));
                    restore_root(&mut txn, &source, Some(from), target, &current, &wanted);
                }
            }
        }
        let update = txn.encode_update_v1();
        drop(txn);
        Ok(update)
    })
}

/// Runs `work`, turning a panic inside `yrs` (a state it cannot handle)
/// into an error: every document it touches is its own and dropped.
fn guarded<T>(work: impl FnOnce() -> Result<T, DocError>) -> Result<T, DocError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| {
        Err(DocError::Corrupt(
            "the document state cannot be read".into(),
        ))
    })
}

/// A document that is only read: it never writes, and it adds nothing
/// while updates are applied (formatting cleanup is off, as in the room).
fn reader() -> Doc {
    Doc::with_options(Options {
        cleanup_formatting: false,
        ..Options::with_client_id(ClientID::new(READER_CLIENT_ID))
    })
}

fn apply(doc: &Doc, bytes: &[u8]) -> Result<(), DocError> {
    let update = Update::decode_v1(bytes).map_err(|err| DocError::Corrupt(err.to_string()))?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|err| DocError::Corrupt(err.to_string()))
}

fn root_names<T: ReadTxn>(txn: &T) -> Vec<String> {
    txn.root_refs().map(|(name, _)| name.to_owned()).collect()
}

/// A root absent from the current document, typed after what it will hold
/// (the type is local: an update names a root's parent, not its type).
fn create_root(txn: &mut TransactionMut, name: &str, wanted: &RootShape) -> BranchPtr {
    match &wanted.sequence {
        Sequence::Text(_) => branch(&txn.get_or_insert_text(name)),
        Sequence::Items(items) if items.iter().all(Shape::is_xml) => {
            branch(&txn.get_or_insert_xml_fragment(name))
        }
        Sequence::Items(_) => branch(&txn.get_or_insert_array(name)),
        Sequence::Empty => branch(&txn.get_or_insert_map(name)),
    }
}

fn branch(shared: &impl AsRef<Branch>) -> BranchPtr {
    BranchPtr::from(shared.as_ref())
}

/// Makes `target` (a root of the document being restored, reading as
/// `current`) read as `from` (the version's root, reading as `wanted`).
fn restore_root(
    txn: &mut TransactionMut,
    source: &impl ReadTxn,
    from: Option<BranchPtr>,
    target: BranchPtr,
    current: &RootShape,
    wanted: &RootShape,
) {
    // Map entries (a Y.Map's, or an XML root's attributes): each one that
    // differs is replaced, each one the version lacks removed.
    let map = MapRef::from(target);
    for key in current.entries.keys() {
        if !wanted.entries.contains_key(key) {
            map.remove(txn, key);
        }
    }
    if let Some(from) = from {
        for (key, value) in MapRef::from(from).iter(source) {
            if current.entries.get(key) != wanted.entries.get(key) {
                copy_entry(source, &map, key, &value, txn);
            }
        }
    }

    // The sequence: text is emptied and written again; items keep the
    // ones both share at the start and at the end.
    if current.sequence == wanted.sequence {
        return;
    }
    let (keep_start, keep_end) = match (&current.sequence, &wanted.sequence) {
        (Sequence::Items(now), Sequence::Items(then)) => common_ends(now, then),
        _ => (0, 0),
    };
    match &current.sequence {
        Sequence::Text(_) => {
            let text = TextRef::from(target);
            let len = text.len(txn);
            if len > 0 {
                text.remove_range(txn, 0, len);
            }
        }
        Sequence::Items(items) => {
            let removed = items.len() - keep_start - keep_end;
            if removed > 0 {
                ArrayRef::from(target).remove_range(txn, index(keep_start), index(removed));
            }
        }
        Sequence::Empty => {}
    }
    let Some(from) = from else { return };
    match &wanted.sequence {
        Sequence::Text(_) => {
            let diff = TextRef::from(from).diff(source, YChange::identity);
            TextRef::from(target).apply_delta(txn, delta(source, diff));
        }
        Sequence::Items(items) => {
            let array = ArrayRef::from(target);
            let values: Vec<Out> = ArrayRef::from(from).iter(source).collect();
            for (at, value) in values
                .iter()
                .enumerate()
                .take(items.len() - keep_end)
                .skip(keep_start)
            {
                copy_item(source, &array, index(at), value, txn);
            }
        }
        Sequence::Empty => {}
    }
}

/// How many items `now` and `then` share at their start, and then at their
/// end (not overlapping).
fn common_ends(now: &[Shape], then: &[Shape]) -> (usize, usize) {
    let start = now.iter().zip(then).take_while(|(a, b)| a == b).count();
    let end = now[start..]
        .iter()
        .rev()
        .zip(then[start..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    (start, end)
}

fn index(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What to insert for `value`: the value itself, or an empty shared type
/// of its kind that [`fill`] completes once it is in the document (so XML
/// attributes keep their types, which `yrs`'s own copies turn to strings).
fn shell(source: &impl ReadTxn, value: &Out) -> In {
    match value {
        Out::Any(any) => In::Any(any.clone()),
        Out::YText(_) => In::Text(Default::default()),
        Out::YArray(_) => In::Array(ArrayPrelim::default()),
        Out::YMap(_) => In::Map(MapPrelim::default()),
        Out::YXmlElement(element) => In::XmlElement(XmlElementPrelim::empty(tag(element))),
        Out::YXmlFragment(_) => In::XmlFragment(XmlFragmentPrelim::default()),
        Out::YXmlText(_) => In::XmlText(XmlDeltaPrelim::default()),
        // Subdocuments are inserted as they are (`copy_entry`,
        // `copy_item`); weak links, and types that never got a type.
        other => other.as_prelim(source),
    }
}

/// Copies `value` into `map` under `key`.
fn copy_entry(
    source: &impl ReadTxn,
    map: &MapRef,
    key: &str,
    value: &Out,
    txn: &mut TransactionMut,
) {
    // A subdocument goes in as a document: `In::Doc` would make a
    // shared type of no known kind.
    if let Out::YDoc(doc) = value {
        map.insert(txn, key, subdoc(doc));
    } else {
        let copy = map.insert(txn, key, shell(source, value));
        fill(source, value, txn, copy);
    }
}

/// Copies `value` into `array` at `at`.
fn copy_item(
    source: &impl ReadTxn,
    array: &ArrayRef,
    at: u32,
    value: &Out,
    txn: &mut TransactionMut,
) {
    if let Out::YDoc(doc) = value {
        array.insert(txn, at, subdoc(doc));
    } else {
        let copy = array.insert(txn, at, shell(source, value));
        fill(source, value, txn, copy);
    }
}

/// Copies the attributes of an XML element or text (map entries, as in
/// a Y.Map, with values of any type).
fn copy_attributes(
    source: &impl ReadTxn,
    from: &impl Xml,
    txn: &mut TransactionMut,
    to: &impl AsRef<Branch>,
) {
    let entries = MapRef::from(branch(to));
    for (key, value) in from.attributes(source) {
        copy_entry(source, &entries, key, &value, txn);
    }
}

/// [`shell`] for a child of an XML element or fragment.
fn xml_shell(node: &XmlOut) -> XmlIn {
    match node {
        XmlOut::Element(element) => XmlIn::Element(XmlElementPrelim::empty(tag(element))),
        XmlOut::Fragment(_) => XmlIn::Fragment(XmlFragmentPrelim::default()),
        XmlOut::Text(_) => XmlIn::Text(XmlDeltaPrelim::default()),
    }
}

fn tag(element: &yrs::XmlElementRef) -> Arc<str> {
    element
        .try_tag()
        .cloned()
        .unwrap_or_else(|| Arc::from("undefined"))
}

/// A new reference to the same subdocument (same guid and options); its
/// content is not part of this document's updates.
fn subdoc(doc: &Doc) -> Doc {
    Doc::with_options(Options {
        client_id: ClientID::random(),
        guid: doc.guid(),
        collection_id: doc.collection_id(),
        offset_kind: doc.offset_kind(),
        skip_gc: doc.skip_gc(),
        auto_load: doc.auto_load(),
        should_load: doc.should_load(),
        cleanup_formatting: false,
    })
}

/// Copies the content of `value` (in the version) into `copy`, the shell
/// [`shell`] made for it, now in the document.
fn fill(source: &impl ReadTxn, value: &Out, txn: &mut TransactionMut, copy: Out) {
    match (value, copy) {
        (Out::YText(from), Out::YText(to)) => {
            to.apply_delta(txn, delta(source, from.diff(source, YChange::identity)));
        }
        (Out::YMap(from), Out::YMap(to)) => {
            for (key, value) in from.iter(source) {
                copy_entry(source, &to, key, &value, txn);
            }
        }
        (Out::YArray(from), Out::YArray(to)) => {
            for (at, value) in from.iter(source).enumerate() {
                copy_item(source, &to, index(at), &value, txn);
            }
        }
        (Out::YXmlElement(from), Out::YXmlElement(to)) => {
            copy_attributes(source, from, txn, &to);
            fill_children(source, from, txn, &to);
        }
        (Out::YXmlFragment(from), Out::YXmlFragment(to)) => {
            fill_children(source, from, txn, &to);
        }
        (Out::YXmlText(from), Out::YXmlText(to)) => {
            copy_attributes(source, from, txn, &to);
            to.apply_delta(txn, delta(source, from.diff(source, YChange::identity)));
        }
        _ => {}
    }
}

fn fill_children(
    source: &impl ReadTxn,
    from: &impl XmlFragment,
    txn: &mut TransactionMut,
    to: &impl XmlFragment,
) {
    for (at, node) in from.children(source).enumerate() {
        let copy = to.insert(txn, index(at), xml_shell(&node));
        fill(source, &Out::from(node), txn, Out::from(copy));
    }
}

/// A text's content as the delta that writes it again. Shared types
/// embedded in a text are copied by `yrs` (XML attributes become strings
/// there).
fn delta(source: &impl ReadTxn, diff: Vec<Diff<YChange>>) -> Vec<Delta<In>> {
    diff.into_iter()
        .map(|chunk| {
            let insert = match chunk.insert {
                Out::Any(any) => In::Any(any),
                other => other.as_prelim(source),
            };
            Delta::Inserted(insert, chunk.attributes)
        })
        .collect()
}

/// What a shared value reads as: content, types and formatting, not
/// identity or history. Two values with equal shapes look the same to
/// every editor.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Any(Any),
    Text(Vec<Chunk>),
    Array(Vec<Shape>),
    Map(BTreeMap<Arc<str>, Shape>),
    Element {
        tag: Arc<str>,
        attributes: BTreeMap<Arc<str>, Shape>,
        children: Vec<Shape>,
    },
    Fragment(Vec<Shape>),
    XmlText {
        attributes: BTreeMap<Arc<str>, Shape>,
        text: Vec<Chunk>,
    },
    Doc(Arc<str>),
    Other(String),
}

impl Shape {
    fn is_xml(&self) -> bool {
        matches!(
            self,
            Shape::Element { .. } | Shape::Fragment(_) | Shape::XmlText { .. }
        )
    }
}

/// A run of text (or an embed) with its formatting.
#[derive(Debug, Clone, PartialEq)]
struct Chunk {
    insert: Shape,
    attributes: BTreeMap<Arc<str>, Any>,
}

/// A root's content. Roots are untyped in an update, so a root is read
/// both ways: its map entries, and its sequence, as text when it holds
/// text, embeds or formatting, else as items.
#[derive(Debug, Clone, PartialEq, Default)]
struct RootShape {
    entries: BTreeMap<Arc<str>, Shape>,
    sequence: Sequence,
}

#[derive(Debug, Clone, PartialEq, Default)]
enum Sequence {
    #[default]
    Empty,
    Text(Vec<Chunk>),
    Items(Vec<Shape>),
}

fn root_shape<T: ReadTxn>(txn: &T, root: BranchPtr) -> RootShape {
    let entries = MapRef::from(root)
        .iter(txn)
        .map(|(key, value)| (Arc::from(key), shape(txn, &value)))
        .collect();
    let text = chunks(txn, TextRef::from(root).diff(txn, YChange::identity));
    let sequence = if text
        .iter()
        .any(|chunk| matches!(chunk.insert, Shape::Any(_)) || !chunk.attributes.is_empty())
    {
        Sequence::Text(text)
    } else {
        let items: Vec<Shape> = ArrayRef::from(root)
            .iter(txn)
            .map(|value| shape(txn, &value))
            .collect();
        if items.is_empty() {
            Sequence::Empty
        } else {
            Sequence::Items(items)
        }
    };
    RootShape { entries, sequence }
}

fn shape<T: ReadTxn>(txn: &T, value: &Out) -> Shape {
    match value {
        Out::Any(any) => Shape::Any(any.clone()),
        Out::YText(text) => Shape::Text(chunks(txn, text.diff(txn, YChange::identity))),
        Out::YArray(array) => Shape::Array(array.iter(txn).map(|v| shape(txn, &v)).collect()),
        Out::YMap(map) => Shape::Map(
            map.iter(txn)
                .map(|(key, v)| (Arc::from(key), shape(txn, &v)))
                .collect(),
        ),
        Out::YXmlElement(element) => Shape::Element {
            tag: tag(element),
            attributes: attributes(txn, element),
            children: element
                .children(txn)
                .map(|node| shape(txn, &Out::from(node)))
                .collect(),
        },
        Out::YXmlFragment(fragment) => Shape::Fragment(
            fragment
                .children(txn)
                .map(|node| shape(txn, &Out::from(node)))
                .collect(),
        ),
        Out::YXmlText(text) => Shape::XmlText {
            attributes: attributes(txn, text),
            text: chunks(txn, text.diff(txn, YChange::identity)),
        },
        Out::YDoc(doc) => Shape::Doc(doc.guid()),
        other => Shape::Other(Out::to_string(other.clone(), txn)),
    }
}

fn attributes<T: ReadTxn>(txn: &T, node: &impl Xml) -> BTreeMap<Arc<str>, Shape> {
    node.attributes(txn)
        .map(|(key, value)| (Arc::from(key), shape(txn, &value)))
        .collect()
}

/// A text's delta with adjacent runs of equal formatting joined (a
/// formatting mark that changes nothing splits a run in `yrs`'s delta).
fn chunks<T: ReadTxn>(txn: &T, diff: Vec<Diff<YChange>>) -> Vec<Chunk> {
    let mut chunks: Vec<Chunk> = Vec::with_capacity(diff.len());
    for part in diff {
        let attributes: BTreeMap<Arc<str>, Any> = part
            .attributes
            .map(|attrs: Box<Attrs>| attrs.into_iter().collect())
            .unwrap_or_default();
        let insert = shape(txn, &part.insert);
        if let (Some(last), Shape::Any(Any::String(more))) = (chunks.last_mut(), &insert) {
            if let Shape::Any(Any::String(text)) = &mut last.insert {
                if last.attributes == attributes {
                    *text = Arc::from(format!("{text}{more}"));
                    continue;
                }
            }
        }
        chunks.push(Chunk { insert, attributes });
    }
    chunks
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use yrs::types::ToJson;
    use yrs::updates::encoder::Encode;
    use yrs::{GetString, TextPrelim, XmlElementRef, XmlFragmentRef, XmlTextPrelim, XmlTextRef};

    use super::*;
    use crate::Room;

    /// Restorer ids for the tests: fresh for each restore.
    static NEXT_RESTORER: Mutex<u64> = Mutex::new(9_000);

    fn restorer() -> u64 {
        let mut next = NEXT_RESTORER.lock().unwrap();
        *next += 1;
        *next
    }

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn apply_to(doc: &Doc, update: &[u8]) {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
    }

    /// A peer with `state`, as an editor (formatting cleanup on, as in
    /// yjs) or as a copy of the stored document.
    fn peer(client_id: u64, state: &[u8]) -> Doc {
        let doc = Doc::with_client_id(client_id);
        apply_to(&doc, state);
        doc
    }

    fn sync(a: &Doc, b: &Doc) {
        apply_to(a, &state(b));
        apply_to(b, &state(a));
    }

    /// How every non-empty root reads.
    fn reads(doc: &Doc) -> BTreeMap<String, RootShape> {
        let txn = doc.transact();
        root_names(&txn)
            .into_iter()
            .filter_map(|name| {
                let root = BranchID::get_root(&txn, name.as_str())?;
                let shape = root_shape(&txn, root);
                (shape != RootShape::default()).then_some((name, shape))
            })
            .collect()
    }

    /// Restores `version` on `current` and checks that a copy of the
    /// document, the given editors and a room all read like the version
    /// afterwards. Returns the update.
    fn restore_and_check(current: &Doc, version: &[u8], editors: &[&Doc]) -> Vec<u8> {
        let expected = reads(&peer(1_000, version));
        let now = state(current);
        let restorer_id = restorer();
        let update = restore_update(&now, version, restorer_id).unwrap();

        let copy = Doc::with_options(Options {
            cleanup_formatting: false,
            ..Options::with_client_id(ClientID::new(2_000))
        });
        apply_to(&copy, &now);
        apply_to(&copy, &update);
        assert_eq!(reads(&copy), expected, "the stored document");
        for editor in editors {
            apply_to(editor, &update);
            assert_eq!(reads(editor), expected, "an editor");
        }

        let room = Room::load(Some(&now), [update.as_slice()]).unwrap();
        assert_eq!(reads(&peer(3_000, &room.encode_state())), expected);
        let room_clients = StateVector::decode_v1(&room.state_vector()).unwrap();
        assert!(
            !room_clients.contains_client(&ClientID::new(0)),
            "the room's own id never appears in the document"
        );
        let made_by = Update::decode_v1(&update).unwrap().state_vector();
        assert!(
            made_by
                .iter()
                .all(|(client, _)| client.get() == restorer_id),
            "every new item is the restorer's: {made_by:?}"
        );
        update
    }

    #[test]
    fn edited_text_reads_like_the_version_again() {
        let ann = Doc::with_client_id(1);
        let log: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = log.clone();
        ann.observe_update_v1("log", move |_, event| {
            sink.lock().unwrap().push(event.update.clone());
        })
        .unwrap();
        let text = ann.get_or_insert_text("t");
        text.insert(&mut ann.transact_mut(), 0, "Hello world");
        text.insert(&mut ann.transact_mut(), 5, ", dear");
        // The version as the server saves it: the log merged.
        let version = {
            let log = log.lock().unwrap();
            merged_state(None, log.iter().map(Vec::as_slice)).unwrap()
        };
        let saved = peer(5, &version);
        let saved_text = saved.get_or_insert_text("t");
        assert_eq!(
            saved_text.get_string(&saved.transact()),
            "Hello, dear world"
        );

        let ben = peer(2, &state(&ann));
        let ben_text = ben.get_or_insert_text("t");
        text.insert(&mut ann.transact_mut(), 0, "Oh. ");
        ben_text.remove_range(&mut ben.transact_mut(), 0, 5);
        ben_text.insert(&mut ben.transact_mut(), 0, "Bye 🎉 wörld");
        sync(&ann, &ben);
        text.push(&mut ann.transact_mut(), "!!");
        sync(&ann, &ben);
        let cy = peer(3, &state(&ann));
        assert_ne!(text.get_string(&ann.transact()), "Hello, dear world");

        restore_and_check(&ann, &version, &[&ben, &cy]);
        for doc in [&ann, &ben, &cy] {
            apply_to(doc, &state(&ben));
            let text = doc.get_or_insert_text("t");
            assert_eq!(text.get_string(&doc.transact()), "Hello, dear world");
        }
    }

    #[test]
    fn formatted_text_comes_back_with_its_formatting_and_embeds() {
        let ann = Doc::with_client_id(1);
        let text = ann.get_or_insert_text("quill");
        {
            let mut txn = ann.transact_mut();
            text.insert(&mut txn, 0, "Hello ");
            let bold: Attrs = HashMap::from([(Arc::from("bold"), Any::Bool(true))]);
            text.insert_with_attributes(&mut txn, 6, "world", bold);
            text.insert_embed(
                &mut txn,
                11,
                Any::from(HashMap::from([("image".to_owned(), Any::from("cat.png"))])),
            );
            text.push(&mut txn, " and more");
        }
        let version = state(&ann);
        let expected = text.diff(&ann.transact(), YChange::identity);

        let ben = peer(2, &version);
        let ben_text = ben.get_or_insert_text("quill");
        {
            let mut txn = ann.transact_mut();
            let unbold: Attrs = HashMap::from([(Arc::from("bold"), Any::Null)]);
            text.format(&mut txn, 6, 3, unbold);
            let italic: Attrs = HashMap::from([(Arc::from("italic"), Any::Bool(true))]);
            text.format(&mut txn, 0, 4, italic);
            text.insert(&mut txn, 8, "RL");
        }
        // The embed is one unit; drop it and type around it.
        ben_text.remove_range(&mut ben.transact_mut(), 11, 1);
        ben_text.insert(&mut ben.transact_mut(), 2, "y");
        sync(&ann, &ben);

        restore_and_check(&ann, &version, &[&ben]);
        let restored = ben_text.diff(&ben.transact(), YChange::identity);
        assert_eq!(
            chunks(&ben.transact(), restored),
            chunks(&ann.transact(), expected),
        );
        assert_eq!(ben_text.get_string(&ben.transact()), "Hello world and more");
    }

    #[test]
    fn maps_and_arrays_come_back_with_nested_values() {
        let ann = Doc::with_client_id(1);
        let map = ann.get_or_insert_map("settings");
        let list = ann.get_or_insert_array("list");
        {
            let mut txn = ann.transact_mut();
            map.insert(&mut txn, "a", 1);
            map.insert(&mut txn, "b", "bee");
            map.insert(
                &mut txn,
                "inner",
                MapPrelim::from([("deep", In::from(true)), ("n", In::from(2.5))]),
            );
            list.push_back(&mut txn, 1);
            list.push_back(&mut txn, "two");
            list.push_back(
                &mut txn,
                Any::from(HashMap::from([("json".to_owned(), Any::from(3))])),
            );
            list.push_back(
                &mut txn,
                MapPrelim::from([
                    ("name", In::from("n")),
                    ("tags", In::from(ArrayPrelim::from(["x"]))),
                ]),
            );
            list.push_back(&mut txn, TextPrelim::new("note"));
        }
        let version = state(&ann);
        let (map_json, list_json) = {
            let txn = ann.transact();
            (map.to_json(&txn), list.to_json(&txn))
        };

        let ben = peer(2, &version);
        {
            let mut txn = ann.transact_mut();
            map.remove(&mut txn, "a");
            map.insert(&mut txn, "b", "changed");
            map.insert(&mut txn, "c", "new");
            let inner: MapRef = map.get(&txn, "inner").unwrap().cast().unwrap();
            inner.insert(&mut txn, "added", 1);
            inner.remove(&mut txn, "deep");
            let nested: MapRef = list.get(&txn, 3).unwrap().cast().unwrap();
            nested.insert(&mut txn, "name", "renamed");
            let note: TextRef = list.get(&txn, 4).unwrap().cast().unwrap();
            note.push(&mut txn, "s!");
            list.remove(&mut txn, 0);
            list.push_back(&mut txn, "appended");
        }
        {
            let ben_list = ben.get_or_insert_array("list");
            ben_list.insert(&mut ben.transact_mut(), 1, "ben's");
        }
        sync(&ann, &ben);

        restore_and_check(&ann, &version, &[&ben]);
        let (ben_map, ben_list) = (
            ben.get_or_insert_map("settings"),
            ben.get_or_insert_array("list"),
        );
        let txn = ben.transact();
        assert_eq!(ben_map.to_json(&txn), map_json);
        assert_eq!(ben_list.to_json(&txn), list_json);
    }

    fn paragraph(txn: &mut TransactionMut, fragment: &XmlFragmentRef, at: u32, words: &str) {
        let p: XmlElementRef = fragment.insert(txn, at, XmlElementPrelim::empty("paragraph"));
        let text: XmlTextRef = p.push_back(txn, XmlTextPrelim::new(words));
        let bold: Attrs = HashMap::from([(Arc::from("bold"), Any::from(true))]);
        text.insert_with_attributes(txn, 0, "» ", bold);
    }

    #[test]
    fn xml_trees_come_back_with_typed_attributes() {
        let ann = Doc::with_client_id(1);
        let fragment = ann.get_or_insert_xml_fragment("prosemirror");
        {
            let mut txn = ann.transact_mut();
            let heading: XmlElementRef =
                fragment.push_back(&mut txn, XmlElementPrelim::empty("heading"));
            heading.insert_attribute(&mut txn, "level", 1);
            heading.push_back(&mut txn, XmlTextPrelim::new("Title"));
            for (at, words) in ["first", "second", "third"].into_iter().enumerate() {
                paragraph(&mut txn, &fragment, index(at + 1), words);
            }
            let list: XmlElementRef =
                fragment.push_back(&mut txn, XmlElementPrelim::empty("bullet_list"));
            let item: XmlElementRef =
                list.push_back(&mut txn, XmlElementPrelim::empty("list_item"));
            item.insert_attribute(&mut txn, "checked", false);
            item.push_back(&mut txn, XmlTextPrelim::new("item"));
        }
        let version = state(&ann);
        let version_html = fragment.get_string(&ann.transact());

        let ben = peer(2, &version);
        {
            let mut txn = ann.transact_mut();
            let heading: XmlElementRef = fragment.get(&txn, 0).unwrap().try_into().unwrap();
            heading.insert_attribute(&mut txn, "level", 2);
            heading.insert_attribute(&mut txn, "id", "h");
            paragraph(&mut txn, &fragment, 2, "inserted");
            fragment.remove(&mut txn, 3);
            let list: XmlElementRef = fragment.get(&txn, 4).unwrap().try_into().unwrap();
            let item: XmlElementRef = list.get(&txn, 0).unwrap().try_into().unwrap();
            let text: XmlTextRef = item.get(&txn, 0).unwrap().try_into().unwrap();
            text.push(&mut txn, "s");
        }
        {
            let ben_fragment = ben.get_or_insert_xml_fragment("prosemirror");
            let mut txn = ben.transact_mut();
            let last: XmlElementRef = ben_fragment.get(&txn, 3).unwrap().try_into().unwrap();
            let text: XmlTextRef = last.get(&txn, 0).unwrap().try_into().unwrap();
            text.remove_range(&mut txn, 0, 2);
        }
        sync(&ann, &ben);
        assert_ne!(fragment.get_string(&ann.transact()), version_html);

        restore_and_check(&ann, &version, &[&ben]);
        let ben_fragment = ben.get_or_insert_xml_fragment("prosemirror");
        let txn = ben.transact();
        assert_eq!(ben_fragment.get_string(&txn), version_html);
        let heading: XmlElementRef = ben_fragment.get(&txn, 0).unwrap().try_into().unwrap();
        assert_eq!(
            heading.get_attribute(&txn, "level"),
            Some(Out::Any(Any::from(1))),
            "attributes keep their types"
        );
        assert_eq!(heading.get_attribute(&txn, "id"), None);
    }

    #[test]
    fn roots_new_since_the_version_are_emptied_and_emptied_ones_come_back() {
        let ann = Doc::with_client_id(1);
        let kept = ann.get_or_insert_map("kept");
        let notes = ann.get_or_insert_text("notes");
        {
            let mut txn = ann.transact_mut();
            kept.insert(&mut txn, "k", "v");
            notes.insert(&mut txn, 0, "to be cleared");
        }
        let version = state(&ann);
        {
            let mut txn = ann.transact_mut();
            notes.remove_range(&mut txn, 0, 13);
            let fresh = txn.get_or_insert_array("fresh");
            fresh.push_back(&mut txn, "new");
            let xml = txn.get_or_insert_xml_fragment("default");
            paragraph(&mut txn, &xml, 0, "added");
        }
        let update = restore_and_check(&ann, &version, &[&ann]);
        let txn = ann.transact();
        assert_eq!(notes.get_string(&txn), "to be cleared");
        assert_eq!(txn.get_array("fresh").unwrap().len(&txn), 0);
        assert_eq!(txn.get_xml_fragment("default").unwrap().len(&txn), 0);
        drop(txn);

        // The version's roots that the document lost entirely (a state
        // with nothing of them) come back too.
        let empty = Doc::with_client_id(4);
        let from_scratch = restore_update(&state(&empty), &version, restorer()).unwrap();
        apply_to(&empty, &from_scratch);
        assert_eq!(reads(&empty), reads(&peer(5, &version)));
        assert!(!update.is_empty());
    }

    #[test]
    fn restoring_again_changes_nothing() {
        let ann = Doc::with_client_id(1);
        let text = ann.get_or_insert_text("t");
        let list = ann.get_or_insert_array("a");
        {
            let mut txn = ann.transact_mut();
            text.insert(&mut txn, 0, "version");
            list.insert_range(&mut txn, 0, [1, 2, 3]);
        }
        let version = state(&ann);
        {
            let mut txn = ann.transact_mut();
            text.insert(&mut txn, 0, "later ");
            list.insert(&mut txn, 1, 9);
        }
        let first = restore_and_check(&ann, &version, &[&ann]);
        let second = restore_update(&state(&ann), &version, restorer()).unwrap();
        assert!(
            Update::decode_v1(&second).unwrap().is_empty(),
            "nothing left to restore"
        );
        assert_eq!(second, Update::new().encode_v1());
        // The same update applied again is a no-op as well.
        let before = reads(&ann);
        apply_to(&ann, &first);
        assert_eq!(reads(&ann), before);
        assert_eq!(reads(&ann), reads(&peer(5, &version)));
        // The text is written again; the array only loses the item that
        // was not in the version, its others stay the original items.
        let update = Update::decode_v1(&first).unwrap();
        assert_eq!(
            update
                .state_vector()
                .iter()
                .map(|(_, clock)| *clock)
                .sum::<u32>(),
            7,
            "{update:?}"
        );
    }

    #[test]
    fn a_concurrent_edit_merges_with_the_restore() {
        let ann = Doc::with_client_id(1);
        let text = ann.get_or_insert_text("t");
        text.insert(&mut ann.transact_mut(), 0, "abc");
        let version = state(&ann);
        text.insert(&mut ann.transact_mut(), 3, "def");
        let ben = peer(2, &state(&ann));
        let restore = restore_update(&state(&ann), &version, restorer()).unwrap();
        let ben_text = ben.get_or_insert_text("t");
        ben_text.push(&mut ben.transact_mut(), "!");
        apply_to(&ann, &restore);
        sync(&ann, &ben);
        assert_eq!(reads(&ann), reads(&ben), "peers converge");
        // The restored text follows the old one (as in yjs, an insert goes
        // past deleted items); the concurrent "!" followed the old text
        // too, and client ids order the two.
        let merged = text.get_string(&ann.transact());
        assert!(merged == "!abc" || merged == "abc!", "{merged}");
    }

    #[test]
    fn subdocument_references_come_back() {
        let ann = Doc::with_client_id(1);
        let map = ann.get_or_insert_map("m");
        let sub = Doc::with_client_id(7);
        let guid = sub.guid();
        map.insert(&mut ann.transact_mut(), "sub", sub);
        let version = state(&ann);
        map.remove(&mut ann.transact_mut(), "sub");
        restore_and_check(&ann, &version, &[&ann]);
        let txn = ann.transact();
        match map.get(&txn, "sub") {
            Some(Out::YDoc(doc)) => assert_eq!(doc.guid(), guid),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_states_and_client_ids_are_errors() {
        let ann = Doc::with_client_id(1);
        ann.get_or_insert_text("t")
            .insert(&mut ann.transact_mut(), 0, "x");
        let good = state(&ann);
        let mut truncated = good.clone();
        truncated.truncate(good.len() - 3);
        for garbage in [&b"not an update"[..], &[0xff; 12], &truncated, &[]] {
            assert!(
                matches!(
                    restore_update(garbage, &good, restorer()),
                    Err(DocError::Corrupt(_))
                ),
                "{garbage:?}"
            );
            assert!(
                matches!(
                    restore_update(&good, garbage, restorer()),
                    Err(DocError::Corrupt(_))
                ),
                "{garbage:?}"
            );
            assert!(
                matches!(merged_state(Some(garbage), []), Err(DocError::Corrupt(_))),
                "{garbage:?}"
            );
            assert!(matches!(
                merged_state(Some(&good), [garbage]),
                Err(DocError::Corrupt(_))
            ));
        }
        for id in [0, 1 << 53, u64::MAX] {
            assert!(matches!(
                restore_update(&good, &good, id),
                Err(DocError::Malformed(_))
            ));
        }
        assert!(
            matches!(restore_update(&good, &good, 1), Err(DocError::Malformed(_))),
            "an id the document uses"
        );
    }

    #[test]
    fn merged_state_is_the_snapshot_and_the_log() {
        let ann = Doc::with_client_id(1);
        let text = ann.get_or_insert_text("t");
        text.insert(&mut ann.transact_mut(), 0, "one");
        let snapshot = state(&ann);
        let sv = ann.transact().state_vector();
        text.push(&mut ann.transact_mut(), " two");
        let after = ann.transact().encode_state_as_update_v1(&sv);
        let merged = merged_state(Some(&snapshot), [after.as_slice()]).unwrap();
        assert_eq!(reads(&peer(2, &merged)), reads(&ann));
        assert_eq!(
            Update::decode_v1(&merged).unwrap().state_vector(),
            ann.transact().state_vector(),
            "nothing added on the way"
        );
        let empty = merged_state(None, []).unwrap();
        assert!(Update::decode_v1(&empty).unwrap().is_empty());
    }
}
