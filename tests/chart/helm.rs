//! Running helm: finding the binary, `helm lint` and `helm template`.

use super::*;

pub(crate) const RELEASE: &str = "ferry";
pub(crate) const NAMESPACE: &str = "ferry-system";

/// The value sets every rendering test goes through: the defaults, a namespaced install, and
/// leader election off with text logs.
pub(crate) const VALUE_SETS: [&[&str]; 3] = [
    &[],
    &["watchNamespaces={shop,billing}"],
    &["leaderElection.enabled=false", "logFormat=text"],
];

/// The plural names of the ferry.dev kinds; their CRDs are `<plural>.ferry.dev`.
pub(crate) const FERRY_PLURALS: [&str; 5] = [
    "outboxsources",
    "brokertopics",
    "retrypolicies",
    "deadletterqueues",
    "consumers",
];

// ---------------------------------------------------------------------------------------------
// Running helm
// ---------------------------------------------------------------------------------------------

pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn chart_dir() -> PathBuf {
    match std::env::var_os("FERRY_CHART_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("charts").join("ferry"),
    }
}

/// The helm binary: `$HELM`, else `helm` on `PATH`, else `.cache/helm/helm`; a panic otherwise.
pub(crate) fn helm() -> PathBuf {
    if let Some(helm) = std::env::var_os("HELM") {
        let helm = PathBuf::from(helm);
        assert!(
            helm.is_file(),
            "HELM={} is not a file; unset it or run `.ci/install-helm` and point HELM at the path it prints",
            helm.display()
        );
        return helm;
    }
    if let Some(helm) = find_on_path(OsStr::new("helm")) {
        return helm;
    }
    let cached = repo_root().join(".cache").join("helm").join("helm");
    if cached.is_file() {
        return cached;
    }
    panic!(
        "no helm binary found (looked at $HELM, `helm` on PATH and {}): run `.ci/install-helm` to install it",
        cached.display()
    );
}

pub(crate) fn find_on_path(program: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

pub(crate) fn run_helm(args: &[&OsStr]) -> Output {
    let helm = helm();
    Command::new(&helm)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm.display()))
}

pub(crate) fn describe(args: &[&OsStr], output: &Output) -> String {
    let args: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
    format!(
        "`helm {}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `helm lint <chart> <extra...>`: whether it passed, and a report of the run.
pub(crate) fn lint(extra: &[&str]) -> (bool, String) {
    let chart = chart_dir();
    let mut args: Vec<&OsStr> = vec![OsStr::new("lint"), chart.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    let output = run_helm(&args);
    (output.status.success(), describe(&args, &output))
}

/// `helm template` of the release with `--set` values: the manifests, or a report of the failure.
pub(crate) fn template(sets: &[&str]) -> Result<String, String> {
    let chart = chart_dir();
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("template"),
        OsStr::new(RELEASE),
        chart.as_os_str(),
        OsStr::new("--namespace"),
        OsStr::new(NAMESPACE),
        OsStr::new("--include-crds"),
    ];
    for set in sets {
        args.extend([OsStr::new("--set"), OsStr::new(set)]);
    }
    let output = run_helm(&args);
    if !output.status.success() {
        return Err(describe(&args, &output));
    }
    String::from_utf8(output.stdout).map_err(|e| format!("helm template printed non-UTF-8: {e}"))
}
