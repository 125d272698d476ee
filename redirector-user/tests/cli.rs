//! The binary's contract with an operator: helpful --help, and a bad config
//! refused before anything touches the kernel, naming the field.

use std::process::Command;

fn redirector(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_redirector")).args(args).output().expect("running redirector")
}

#[test]
fn help_lists_the_subcommands() {
    let out = redirector(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for subcommand in ["run", "decap", "pass"] {
        assert!(help.contains(subcommand), "--help mentions {subcommand}:\n{help}");
    }
}

#[test]
fn bad_config_is_refused_with_the_field_named() {
    let dir = std::env::temp_dir().join(format!("redirector-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "interface = \"eth0\"\nmode = \"dsr\"\n[service]\naddresses = [\"192.0.2.10\"]\n[edge]\nipv4 = \"10.0.0.1\"\n\
         [[servers]]\nname = \"home1\"\nipv4 = \"10.0.0.11\"\n[[clients]]\naddress = \"10.0.0.2:5060\"\nserver = \"home2\"\n",
    )
    .unwrap();
    let out = redirector(&["run", "--config", path.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("clients[0].server") && stderr.contains("home2"), "{stderr}");
}

#[test]
fn missing_config_file_says_which_file() {
    let out = redirector(&["run", "--config", "/nonexistent/redirector.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/redirector.toml"));
}

#[test]
fn version_names_the_revision_and_the_xdp_object() {
    let out = redirector(&["--version"]);
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with(&format!("redirector {} (git ", env!("CARGO_PKG_VERSION"))), "{version}");
    assert!(version.contains(", XDP object xxh3 "), "{version}");
}

#[test]
fn check_config_names_every_problem_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("redirector-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("edge.toml");
    std::fs::write(
        &path,
        "interface = \"\"\nmode = \"dsr\"\n[service]\naddresses = [\"192.0.2.10\"]\n[edge]\nipv4 = \"10.0.0.1\"\n\
         [[servers]]\nname = \"home1\"\nipv4 = \"10.0.0.11\"\n[[clients]]\naddress = \"10.0.0.2:5060\"\nserver = \"home2\"\n\
         [limits]\nthrottle_for = -1\n",
    )
    .unwrap();
    let out = redirector(&["check-config", path.to_str().unwrap(), "--json"]);
    let example =
        redirector(&["check-config", "--json", concat!(env!("CARGO_MANIFEST_DIR"), "/../redirector.example.toml")]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(report["valid"], false);
    let fields: Vec<&str> =
        report["problems"].as_array().unwrap().iter().map(|p| p["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"interface") && fields.contains(&"clients[0].server"), "{report}");
    assert!(fields.contains(&"limits.throttle_for"), "{report}");
    // The example's fields are all valid; only the host may lack its interface.
    let report: serde_json::Value = serde_json::from_slice(&example.stdout).expect("--json prints JSON");
    let fields: Vec<&str> =
        report["problems"].as_array().unwrap().iter().map(|p| p["field"].as_str().unwrap()).collect();
    assert!(fields.iter().all(|field| *field == "interface"), "{report}");
}

/// The first line `redirector home` logs on stderr with `args`, after which
/// it is killed.
fn first_log_line(args: &[&str]) -> String {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_redirector"))
        .args(["home", "--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running redirector home");
    let mut line = String::new();
    let read = std::io::BufReader::new(child.stderr.take().unwrap()).read_line(&mut line);
    child.kill().unwrap();
    child.wait().unwrap();
    read.expect("reading its log");
    line
}

#[test]
fn logs_carry_no_colour_off_a_terminal_and_come_as_json_when_asked() {
    let text = first_log_line(&[]);
    assert!(text.contains("registrar answering") && !text.contains('\x1b'), "{text:?}");
    assert!(first_log_line(&["--color", "always"]).contains('\x1b'), "colour when asked");
    let json: serde_json::Value = serde_json::from_str(&first_log_line(&["--log-format", "json"])).expect("JSON");
    assert_eq!(json["level"], "INFO");
    assert_eq!(json["fields"]["message"], "registrar answering");
}

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() {
    let bash = redirector(&["completions", "bash"]);
    assert!(bash.status.success());
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(script.contains("_redirector()") && script.contains("check-config"), "{script}");
    let dir = std::env::temp_dir().join(format!("redirector-man-{}", std::process::id()));
    assert!(redirector(&["man", dir.to_str().unwrap()]).status.success());
    let page = std::fs::read_to_string(dir.join("redirector.1")).expect("redirector.1");
    let run = std::fs::read_to_string(dir.join("redirector-run.1")).expect("redirector-run.1");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(page.contains(".TH redirector 1") && page.contains("check\\-config"), "{page}");
    assert!(run.contains("\\-\\-config"), "{run}");
}
