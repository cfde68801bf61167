//! What every view store does with a view's saved state, checked on each
//! backend: saved, loaded back, replaced, removed (what becomes of a
//! dropped version of a view), and the other views left as they were.

use bookshelf_core::{Checkpoint, Position, StoredView, ViewStore};

fn view(at: u64, state: &str) -> StoredView {
    let state = serde_json::value::RawValue::from_string(state.to_owned()).expect("JSON");
    StoredView::new(&Checkpoint::global(Position(at)), state)
}

fn seen(saved: Option<StoredView>) -> Option<(u64, String)> {
    saved.map(|saved| (saved.checkpoint.0, saved.state.get().to_owned()))
}

/// `one` and `other` are two views of one store (two names).
pub async fn a_removed_view_is_gone_and_the_others_stay(one: impl ViewStore, other: impl ViewStore) {
    assert!(one.load().await.expect("loaded").is_none(), "nothing saved yet");
    one.remove().await.expect("removing nothing is no error");
    one.save(&view(3, r#"{"n":1}"#)).await.expect("saved");
    one.save(&view(5, r#"{"n":2}"#)).await.expect("replaced");
    other.save(&view(7, r#"{"n":3}"#)).await.expect("saved");
    assert_eq!(
        seen(one.load().await.expect("loaded")),
        Some((5, r#"{"n":2}"#.to_owned()))
    );

    one.remove().await.expect("removed");
    assert_eq!(seen(one.load().await.expect("loaded")), None, "gone");
    assert_eq!(
        seen(other.load().await.expect("loaded")),
        Some((7, r#"{"n":3}"#.to_owned())),
        "the other view stays"
    );
    one.save(&view(1, r#"{"n":4}"#)).await.expect("saved again");
    assert_eq!(
        seen(one.load().await.expect("loaded")),
        Some((1, r#"{"n":4}"#.to_owned()))
    );
}
