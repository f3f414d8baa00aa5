//! Skipping (or, under CI, failing) privileged tests when not running as root.

/// Env var that turns a would-be skip into a failure (`cargo xtask test` sets it).
pub const REQUIRE_ROOT_ENV: &str = "PODNET_TESTS_REQUIRE_ROOT";

/// True if the effective uid is 0. Otherwise prints `skipped: <test> needs root` to stderr
/// and returns false, or panics if `PODNET_TESTS_REQUIRE_ROOT=1` is set.
///
/// The test is named after the current thread, which libtest names after the test; prefer
/// the [`require_root!`](crate::require_root!) macro, which names the enclosing function.
pub fn require_root() -> bool {
    let thread = std::thread::current();
    require_root_for(thread.name().unwrap_or("this test"))
}

/// [`require_root`] with an explicit test name.
pub fn require_root_for(test: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var(REQUIRE_ROOT_ENV).as_deref() != Ok("1"),
        "privileged test would be skipped but {REQUIRE_ROOT_ENV}=1 ({test} needs root)"
    );
    eprintln!("skipped: {test} needs root");
    false
}

/// Turns `"crate::module::test_fn::here"` (the type name of a fn item declared inside
/// `test_fn`) into `"crate::module::test_fn"`.
#[doc(hidden)]
pub fn __fn_path(type_name: &str) -> &str {
    type_name.strip_suffix("::here").unwrap_or(type_name)
}

/// `if !require_root() { return; }`, naming the enclosing test function in the skip message.
///
/// ```no_run
/// #[test]
/// fn needs_netns() {
///     podnet_tests::require_root!();
///     // ...
/// }
/// ```
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::require_root_for({
            fn here() {}
            $crate::privilege::__fn_path(::std::any::type_name_of_val(&here))
        }) {
            return;
        }
    };
}
