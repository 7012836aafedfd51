//! Installing, converging and removing capture rules in real network namespaces.

mod common;

use common::{TestNs, by_chain, privileged};
use strait_capture::{CaptureError, CaptureSpec, Iptables, apply, installed, remove};
use strait_netns::NetNs;

fn spec() -> CaptureSpec {
    CaptureSpec {
        exclude_outbound_ports: vec![22, 3306],
        exclude_outbound_cidrs: vec!["198.18.100.0/24".into()],
        exclude_inbound_ports: vec![9090],
        probe_sources: vec!["198.18.0.1".into()],
        ..CaptureSpec::default()
    }
}

/// Rules of other owners, as a CNI plugin or the application's own setup could leave them.
const FOREIGN: &str = "\
*nat
:FOREIGN - [0:0]
-A PREROUTING -p udp --dport 53 -j RETURN
-A OUTPUT -j FOREIGN
-A FOREIGN -d 198.18.99.0/24 -j RETURN
COMMIT
";

fn jumps(lines: &[String], chain: &str) -> usize {
    lines
        .iter()
        .filter(|line| line.starts_with(&format!("-A {chain} ")))
        .count()
}

#[test]
fn apply_twice_installs_exactly_one_copy() {
    if !privileged() {
        return;
    }
    let pod = TestNs::new();
    apply(&pod.ns, &spec()).unwrap();
    let first = installed(&pod.ns).unwrap();
    let table = pod.nat_table();
    apply(&pod.ns, &spec()).unwrap();
    let second = installed(&pod.ns).unwrap();
    assert_eq!(first, second);
    assert_eq!(table, pod.nat_table());

    assert_eq!(jumps(&second, "PREROUTING"), 1, "{second:#?}");
    assert_eq!(jumps(&second, "OUTPUT"), 1, "{second:#?}");
    assert!(
        second.contains(&"-N STRAIT_INBOUND".to_string()),
        "{second:#?}"
    );
    assert!(
        second.contains(&"-N STRAIT_OUTBOUND".to_string()),
        "{second:#?}"
    );
    // hbone, probe source, excluded port, redirect.
    assert_eq!(jumps(&second, "STRAIT_INBOUND"), 4, "{second:#?}");
    // mark, lo, 127/8, two ports, one CIDR, redirect.
    assert_eq!(jumps(&second, "STRAIT_OUTBOUND"), 7, "{second:#?}");
    for expected in [
        "-A STRAIT_OUTBOUND -m mark --mark 0x539/0xfff -j RETURN",
        "-A STRAIT_OUTBOUND -d 198.18.100.0/24 -j RETURN",
        "-A STRAIT_OUTBOUND -p tcp -j REDIRECT --to-ports 15001",
        "-A STRAIT_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A STRAIT_INBOUND -s 198.18.0.1/32 -j RETURN",
        "-A STRAIT_INBOUND -p tcp -j REDIRECT --to-ports 15006",
    ] {
        assert!(
            second.contains(&expected.to_string()),
            "missing {expected}: {second:#?}"
        );
    }
}

#[test]
fn apply_converges_from_stale_and_partial_state() {
    if !privileged() {
        return;
    }
    let reference = TestNs::new();
    apply(&reference.ns, &spec()).unwrap();
    let expected = by_chain(&installed(&reference.ns).unwrap());

    let pod = TestNs::new();
    pod.exec_with_input(&["iptables-restore", "--noflush"], FOREIGN);
    // What a crash of an older version could leave: duplicated jumps, a chain that no longer
    // exists in the current rule set (referenced from ours and from a foreign chain), rules with
    // old ports, and no inbound chain at all.
    pod.exec_with_input(
        &["iptables-restore", "--noflush"],
        "\
*nat
:STRAIT_OLD - [0:0]
:STRAIT_OUTBOUND - [0:0]
-A OUTPUT -p tcp -j STRAIT_OUTBOUND
-A OUTPUT -p tcp -j STRAIT_OUTBOUND
-A OUTPUT -j STRAIT_OLD
-A FOREIGN -g STRAIT_OLD
-A STRAIT_OUTBOUND -j STRAIT_OLD
-A STRAIT_OUTBOUND -p tcp -j REDIRECT --to-ports 15999
-A STRAIT_OLD -p tcp -j REDIRECT --to-ports 15998
COMMIT
",
    );
    apply(&pod.ns, &spec()).unwrap();
    let converged = installed(&pod.ns).unwrap();
    assert_eq!(by_chain(&converged), expected);

    // Foreign rules are kept, and our jump is first in OUTPUT.
    let table = pod.nat_table();
    for kept in [
        "-A PREROUTING -p udp -m udp --dport 53 -j RETURN",
        "-A OUTPUT -j FOREIGN",
        "-A FOREIGN -d 198.18.99.0/24 -j RETURN",
    ] {
        assert!(table.contains(kept), "lost {kept}:\n{table}");
    }
    assert!(!table.contains("STRAIT_OLD"), "{table}");
    let first_output = table.lines().find(|l| l.starts_with("-A OUTPUT ")).unwrap();
    assert_eq!(first_output, "-A OUTPUT -p tcp -j STRAIT_OUTBOUND");

    // A different spec replaces the rules rather than adding to them.
    let changed = CaptureSpec {
        exclude_outbound_ports: vec![443],
        exclude_outbound_cidrs: vec![],
        ..spec()
    };
    apply(&reference.ns, &changed).unwrap();
    apply(&pod.ns, &changed).unwrap();
    let changed_rules = installed(&pod.ns).unwrap();
    assert_eq!(
        by_chain(&changed_rules),
        by_chain(&installed(&reference.ns).unwrap())
    );
    assert!(
        !changed_rules
            .iter()
            .any(|l| l.contains("3306") || l.contains("198.18.100.0"))
    );
    assert!(changed_rules.iter().any(|l| l.contains("--dport 443")));
}

#[test]
fn remove_leaves_the_table_as_it_was() {
    if !privileged() {
        return;
    }
    // A namespace with nothing, and one with rules of other owners.
    for foreign in [None, Some(FOREIGN)] {
        let pod = TestNs::new();
        if let Some(rules) = foreign {
            pod.exec_with_input(&["iptables-restore", "--noflush"], rules);
        }
        let before = pod.nat_table();
        apply(&pod.ns, &spec()).unwrap();
        assert_ne!(pod.nat_table(), before);
        remove(&pod.ns).unwrap();
        assert_eq!(pod.nat_table(), before);
        assert!(installed(&pod.ns).unwrap().is_empty());
        // Removing again is a no-op, not an error.
        remove(&pod.ns).unwrap();
        assert_eq!(pod.nat_table(), before);
    }
}

#[test]
fn invalid_spec_is_rejected_before_touching_the_namespace() {
    if !privileged() {
        return;
    }
    let pod = TestNs::new();
    let before = pod.nat_table();
    let bad = CaptureSpec {
        exclude_outbound_cidrs: vec!["198.18.0.0/99".into()],
        ..spec()
    };
    let err = apply(&pod.ns, &bad).unwrap_err();
    assert!(matches!(err, CaptureError::InvalidSpec { .. }), "{err}");
    assert!(err.to_string().contains("198.18.0.0/99"), "{err}");
    assert_eq!(pod.nat_table(), before);
}

#[test]
fn missing_and_failing_programs_are_reported() {
    if !privileged() {
        return;
    }
    let here = NetNs::current().unwrap();
    let missing = Iptables::with_binaries(
        "/nonexistent/iptables-restore",
        "/nonexistent/iptables-save",
    );
    let err = missing.installed(&here).unwrap_err();
    assert!(matches!(err, CaptureError::MissingBinary { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/iptables-save"),
        "{err}"
    );

    let pod = TestNs::new();
    let failing = Iptables::with_binaries("false", "iptables-save");
    let err = failing.apply(&pod.ns, &spec()).unwrap_err();
    assert!(matches!(err, CaptureError::Failed { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("false"), "{message}");
    assert!(message.contains(&pod.name), "{message}");
    assert!(installed(&pod.ns).unwrap().is_empty());
}
