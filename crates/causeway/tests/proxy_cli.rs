//! `causeway proxy init` inside a real network namespace (root, as in CI): the rules it applies
//! are what `iptables-save` then shows, and running it again changes nothing.

use causeway_lab::netns::Namespace;

fn nat_rules(namespace: &Namespace) -> Vec<String> {
    namespace
        .run("iptables-save", &["-t", "nat"])
        .unwrap()
        .lines()
        .filter(|line| line.starts_with("-A"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn init_captures_the_pods_traffic_and_is_idempotent() {
    let pod = Namespace::create("proxy-init").unwrap();
    let init = || {
        let output = pod
            .command(env!("CARGO_BIN_EXE_causeway"))
            .args(["proxy", "init", "-b", "5000", "--capture-dns"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let said = init();
    assert!(said.contains("outbound TCP to 15001"), "{said}");
    let rules = nat_rules(&pod);
    for expected in [
        "-A CAUSEWAY_INBOUND -p tcp -m tcp --dport 5000 -j CAUSEWAY_IN_REDIRECT",
        "-A CAUSEWAY_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A CAUSEWAY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A OUTPUT -p udp -m udp --dport 53 -m mark ! --mark 0x539 -j REDIRECT --to-ports 15053",
    ] {
        assert!(
            rules.iter().any(|rule| rule == expected),
            "{expected} not in {rules:#?}"
        );
    }
    init();
    assert_eq!(nat_rules(&pod), rules, "a second run changed the table");
}

#[test]
fn dry_run_prints_the_rules_and_bad_flags_are_refused_with_the_entry() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_causeway"))
            .args(["proxy", "init", "--dry-run"])
            .args(args)
            .output()
            .unwrap()
    };
    let printed = run(&["-x", "10.0.0.0/8"]);
    assert!(printed.status.success());
    let rules = String::from_utf8(printed.stdout).unwrap();
    assert!(
        rules.starts_with("*nat\n") && rules.ends_with("COMMIT\n"),
        "{rules}"
    );
    assert!(
        rules.contains("-A CAUSEWAY_OUTPUT -d 10.0.0.0/8 -j RETURN"),
        "{rules}"
    );

    let refused = run(&["-b", "5000,http"]);
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("`http` is not a port"), "{error}");
}
