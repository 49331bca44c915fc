//! What the dashboard's browser test needs: headless Chromium and chromedriver (Debian
//! packages `chromium` and `chromium-driver`), installed with apt-get when missing and when
//! this process may (root, or password-less sudo).

use std::process::{Command, Stdio};

const PACKAGES: [&str; 2] = ["chromium", "chromium-driver"];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// How to run apt-get here: directly as root, through `sudo -n`, or not at all.
fn apt_get() -> Option<Command> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0");
    if is_root {
        return Some(Command::new("apt-get"));
    }
    if on_path("sudo") && succeeds(Command::new("sudo").args(["-n", "true"])) {
        let mut command = Command::new("sudo");
        command.args(["-n", "apt-get"]);
        return Some(command);
    }
    None
}

/// Makes sure chromedriver is there for the browser test. Without it, and without a way to
/// install it, a local run goes on (the test says it skipped) while CI fails here.
pub fn ensure_packages(ci: bool) -> Result<(), String> {
    if on_path("chromedriver") || std::env::var_os("CHROMEDRIVER").is_some() {
        return Ok(());
    }
    let missing = format!(
        "chromedriver is missing (Debian packages {})",
        PACKAGES.join(", ")
    );
    if !on_path("apt-get") {
        return skip_or_fail(ci, &format!("{missing} and there is no apt-get"));
    }
    let Some(mut install) = apt_get() else {
        return skip_or_fail(
            ci,
            &format!("{missing}; installing needs root or password-less sudo"),
        );
    };
    println!("==> browser test: installing {}", PACKAGES.join(" "));
    let installed = install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(PACKAGES)
        .status()
        .is_ok_and(|status| status.success());
    // A fresh machine has no package lists yet: update once and try again.
    let installed = installed || {
        apt_get().is_some_and(|mut update| succeeds(update.arg("update")))
            && apt_get().is_some_and(|mut install| {
                install
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(PACKAGES)
                    .status()
                    .is_ok_and(|status| status.success())
            })
    };
    if installed && on_path("chromedriver") {
        Ok(())
    } else {
        skip_or_fail(ci, &format!("{missing} and apt-get could not install it"))
    }
}

fn skip_or_fail(ci: bool, reason: &str) -> Result<(), String> {
    if ci {
        Err(format!("CI=true: {reason}"))
    } else {
        println!("==> browser test will be SKIPPED: {reason}");
        Ok(())
    }
}
