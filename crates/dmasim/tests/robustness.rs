//! Regression tests for the defects of issue 19's hostile-input campaign: each test
//! is named after the item it covers (`r19_NN_...`) and failed before its fix.
//! A hostile script must end in a report (exit 0, 1 or 2), never a panic, an abort
//! or unbounded host memory or time.

mod common;

use common::script;

/// Item 1: `expect_eq` shows its values cut to 60 characters; the cut was at byte 60,
/// which panics inside a multi-byte character.
#[test]
fn r19_01_expect_eq_non_ascii() {
    let (r, _) = script(
        r#"
        let a = "a";
        for i in 0..36 { a += "é"; }
        expect_eq(a, "b", "m");
        "#,
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.expectations.failed, 1);
    let msg = &r.expectations.failures[0].msg;
    // "a" and 36 "é" are 37 characters: under 60, shown whole.
    assert!(msg.contains(&format!("left: a{}", "é".repeat(36))), "{msg}");
    let (r, _) = script(
        r#"
        let a = "";
        for i in 0..100 { a += "é"; }
        expect_eq(a, "b", "m");
        "#,
    );
    let msg = &r.expectations.failures[0].msg;
    // 100 characters are cut to the first 60 and an ellipsis.
    assert!(
        msg.contains(&format!("left: {}…,", "é".repeat(60))),
        "{msg}"
    );
}
