//! `strait-perf hot-text`: the linker script that places the code the proxies run together.
//!
//! An idle proxy's resident memory is mostly its own code: on a text page fault the kernel maps
//! the whole 64 KiB window around the page ("fault-around"), so a few kilobytes of startup code
//! scattered over a 23 MB `.text` keep megabytes resident. The script generated here puts every
//! function a training run executed at the start of `.text`, between the symbols
//! `__strait_hot_text_start` and `__strait_hot_text_end`.
//!
//! The training run's functions come from callgrind profiles (`--demangle=no`), named as the
//! linker sees them: `-ffunction-sections` gives each function its own `.text.<symbol>` input
//! section (`.text.unlikely.<symbol>` for code LLVM judged cold).
//!
//! Rust's legacy symbol names end in a hash (`17h<16 hex digits>E`) that changes with the
//! compiler and the dependency versions. Matching on the name up to the hash keeps the script
//! valid across such updates, and for an ordinary function that name still picks out one
//! function. A generic function's instances share it, though: `PhantomData<T>::deserialize`
//! has hundreds, of which a run uses a few. Where the name up to the hash would pull in much
//! more code than the run used, the executed instances are named in full; those entries go
//! stale after an update (the instances return to `.text`) until the script is regenerated.
//!
//! Each process runs one role (`standalone` gateway, `node`, `waypoint`), and the section is
//! laid out so that each role's code is as contiguous as it can be: the functions are grouped
//! by the set of roles that ran them, and the groups ordered so that the least code of other
//! roles lies between the first and last group of each role.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

/// A name up to the hash is used when the code it matches is at most one and a half times what
/// the run executed of it plus this slack; otherwise its executed instances are named in full
/// (see the module docs). The slack lets a small unused instance in: it costs a fraction of a
/// fault-around window.
const SHARED_NAME_SLACK: u64 = 4096;

/// Writes to `out` the script placing what callgrind `profiles` saw `binary` execute, once
/// every role in `require_roles` has a profile; returns a one-line summary.
pub fn run(
    binary: &Path,
    out: &Path,
    trained_on: &str,
    require_roles: &[String],
    profiles: &[PathBuf],
) -> anyhow::Result<String> {
    let object_name = binary
        .file_name()
        .and_then(|name| name.to_str())
        .with_context(|| format!("{}: no file name", binary.display()))?;
    let executed = profiles
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            executed_functions(&text, object_name).with_context(|| path.display().to_string())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for role in require_roles {
        if !executed.iter().any(|profile| &profile.role == role) {
            bail!(
                "no profile of a `{role}` process among {} profiles",
                profiles.len()
            );
        }
    }
    let elf = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let elf = object::File::parse(&*elf)
        .with_context(|| format!("{}: not an object file", binary.display()))?;
    let sizes = function_sizes(&elf).with_context(|| binary.display().to_string())?;
    let compiler = compiler(&elf).with_context(|| binary.display().to_string())?;
    let placement = place(&executed, &sizes);
    let patterns = placement.patterns().len();
    if patterns == 0 {
        bail!(
            "the profiles record no function of {} (were they recorded from it? valgrind reads \
             no symbols from a binary whose code is in more than one .text)",
            binary.display()
        );
    }
    std::fs::write(out, script(&placement, &compiler, trained_on))
        .with_context(|| format!("writing {}", out.display()))?;
    let functions: BTreeSet<&String> = executed
        .iter()
        .flat_map(|profile| &profile.functions)
        .collect();
    Ok(format!(
        "{} functions executed ({} KiB, {} without a symbol); {} patterns place {} KiB",
        functions.len(),
        placement.executed_bytes / 1024,
        placement.unplaced,
        patterns,
        placement.placed_bytes() / 1024
    ))
}

/// What one process executed.
#[derive(Debug, PartialEq)]
pub struct Profile {
    /// The process's subcommand (`standalone`, `node`, …): the word after the program in the
    /// profile's `cmd:` line.
    pub role: String,
    /// The functions of the binary that have cost in the profile.
    pub functions: BTreeSet<String>,
}

/// The functions of `object_name` (a file name, as callgrind's `ob=` records it) that have cost
/// in a callgrind profile, and the role of the process that ran them.
pub fn executed_functions(profile: &str, object_name: &str) -> anyhow::Result<Profile> {
    // With name compression, `ob=(3) /path` defines id 3 and a later `ob=(3)` refers to it;
    // `ob` and `cob` share one table, as do `fn` and `cfn`.
    let mut objects: HashMap<String, String> = HashMap::new();
    let mut functions: HashMap<String, String> = HashMap::new();
    let mut in_object = false;
    let mut role = String::new();
    let mut executed = BTreeSet::new();
    let mut complete = false;
    for (index, line) in profile.lines().enumerate() {
        if line.starts_with("totals:") {
            complete = true;
            continue;
        }
        if let Some(command) = line.strip_prefix("cmd:") {
            role = command
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let table = match key {
            "ob" | "cob" => &mut objects,
            "fn" | "cfn" => &mut functions,
            _ => continue,
        };
        let name = resolve(table, value).with_context(|| format!("line {}", index + 1))?;
        match key {
            "ob" => in_object = file_name(&name) == object_name,
            "fn" if in_object => {
                // With `--separate-recs`, a recursion level is written `name'2`.
                let symbol = name
                    .split_once('\'')
                    .map_or(name.as_str(), |(symbol, _)| symbol);
                executed.insert(symbol.to_string());
            }
            _ => {}
        }
    }
    if !complete {
        // callgrind writes `totals:` last: without it the process was killed mid-write.
        bail!("incomplete profile (no totals: line): the process did not exit cleanly");
    }
    Ok(Profile {
        role,
        functions: executed,
    })
}

/// The name a compressed (`(id) name` or `(id)`) or plain value stands for.
fn resolve(table: &mut HashMap<String, String>, value: &str) -> anyhow::Result<String> {
    let Some(rest) = value.strip_prefix('(') else {
        return Ok(value.to_string());
    };
    let Some((id, name)) = rest.split_once(')') else {
        bail!("unterminated name id in {value:?}");
    };
    let name = name.trim_start();
    if name.is_empty() {
        return table
            .get(id)
            .cloned()
            .with_context(|| format!("name id ({id}) used before it is defined"));
    }
    table.insert(id.to_string(), name.to_string());
    Ok(name.to_string())
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The sizes of the function symbols of an ELF file, by name.
pub fn function_sizes(elf: &object::File) -> anyhow::Result<HashMap<String, u64>> {
    let mut sizes = HashMap::new();
    for symbol in elf.symbols() {
        if symbol.kind() != SymbolKind::Text || symbol.size() == 0 {
            continue;
        }
        // Local symbols of different files may share a name: the name matches them all.
        if let Ok(name) = symbol.name() {
            *sizes.entry(name.to_string()).or_default() += symbol.size();
        }
    }
    if sizes.is_empty() {
        bail!("the binary has no function symbols (stripped?)");
    }
    Ok(sizes)
}

/// The compiler that built an ELF file, as `rustc -V` prints it, from its `.comment` section
/// (`rustc version 1.95.0 (…)`).
pub fn compiler(elf: &object::File) -> anyhow::Result<String> {
    let comment = elf
        .section_by_name(".comment")
        .context("the binary has no .comment section")?;
    let data = comment.data().context("reading .comment")?;
    data.split(|&byte| byte == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| entry.strip_prefix("rustc version "))
        .map(|version| format!("rustc {version}"))
        .context("no rustc version in .comment")
}

/// A legacy-mangled name up to and including its hash marker (`…17h`), if it has one.
fn unhashed(symbol: &str) -> Option<&str> {
    if !symbol.starts_with("_ZN") {
        return None;
    }
    // `…17h` + 16 hex digits + `E`, maybe followed by an LLVM suffix such as `.llvm.123`. A path
    // component may itself contain `17h`: the hash is the last marker followed by one.
    symbol
        .match_indices("17h")
        .filter(|(at, _)| {
            let hash = &symbol.as_bytes()[at + 3..];
            hash.len() > 16 && hash[..16].iter().all(u8::is_ascii_hexdigit) && hash[16] == b'E'
        })
        .last()
        .map(|(at, _)| &symbol[..at + 3])
}

/// A symbol without the suffixes LLVM appends when it promotes a local function (`.llvm.123`)
/// or renames a duplicate (`.42`): they change with any code change, so patterns match any.
fn without_llvm_suffix(symbol: &str) -> &str {
    let mut base = symbol;
    while let Some((head, tail)) = base.rsplit_once('.') {
        let numeric = !tail.is_empty() && tail.bytes().all(|byte| byte.is_ascii_digit());
        if !(numeric || tail == "llvm") {
            break;
        }
        base = head;
    }
    base
}

/// What the script will place, and how much of it the run executed.
#[derive(Debug, PartialEq)]
pub struct Placement {
    /// The groups of the layout, in order.
    pub groups: Vec<Group>,
    /// Bytes of code the run executed that the binary has symbols for.
    pub executed_bytes: u64,
    /// Executed functions the binary has no symbol for (callgrind's names for code without
    /// one). Functions written in assembly have symbols but no section of their own, so they
    /// count as placed without moving: a few KiB of ring's.
    pub unplaced: usize,
}

impl Placement {
    /// Function name patterns, in layout order: each places the sections `.text.<pattern>` and
    /// `.text.unlikely.<pattern>`, with or without a suffix LLVM adds (`.llvm.123`, `.42`).
    pub fn patterns(&self) -> Vec<&str> {
        let patterns = self.groups.iter().flat_map(|group| &group.patterns);
        patterns.map(String::as_str).collect()
    }

    /// Bytes of code the patterns match in the binary.
    pub fn placed_bytes(&self) -> u64 {
        self.groups.iter().map(|group| group.bytes).sum()
    }
}

/// One group of the layout: the patterns of the functions a given set of roles ran.
#[derive(Debug, PartialEq)]
pub struct Group {
    pub roles: BTreeSet<String>,
    pub patterns: BTreeSet<String>,
    /// Bytes of code the patterns match in the binary.
    pub bytes: u64,
}

/// The patterns that place the functions `profiles` executed, given the binary's function
/// `sizes`.
pub fn place(profiles: &[Profile], sizes: &HashMap<String, u64>) -> Placement {
    let mut roles_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for profile in profiles {
        for name in &profile.functions {
            roles_of.entry(name).or_default().insert(&profile.role);
        }
    }
    let mut shared_size: HashMap<&str, u64> = HashMap::new();
    for (name, size) in sizes {
        if let Some(stem) = unhashed(name) {
            *shared_size.entry(stem).or_default() += size;
        }
    }
    // (pattern, bytes placed, roles) before grouping.
    let mut entries: Vec<(String, u64, BTreeSet<&str>)> = Vec::new();
    let mut by_stem: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let (mut executed_bytes, mut unplaced) = (0, 0);
    for (&name, roles) in &roles_of {
        let Some(&size) = sizes.get(name) else {
            unplaced += 1;
            continue;
        };
        executed_bytes += size;
        match unhashed(name) {
            Some(stem) => by_stem.entry(stem).or_default().push(name),
            None => entries.push((without_llvm_suffix(name).to_string(), size, roles.clone())),
        }
    }
    for (stem, names) in by_stem {
        let used: u64 = names.iter().map(|name| sizes[*name]).sum();
        let shared = shared_size[stem];
        if shared <= used + used / 2 + SHARED_NAME_SLACK {
            let roles = names.iter().flat_map(|name| roles_of[name].iter().copied());
            // The hash's 16 digits spelt out, so that a nested item (whose name would follow
            // `17h` as a path component) is not matched.
            entries.push((format!("{stem}????????????????E"), shared, roles.collect()));
        } else {
            for name in names {
                let pattern = without_llvm_suffix(name).to_string();
                entries.push((pattern, sizes[name], roles_of[name].clone()));
            }
        }
    }
    let mut groups: BTreeMap<BTreeSet<&str>, Group> = BTreeMap::new();
    for (pattern, bytes, roles) in entries {
        let group = groups.entry(roles).or_insert_with_key(|roles| Group {
            roles: roles.iter().map(|role| role.to_string()).collect(),
            patterns: BTreeSet::new(),
            bytes: 0,
        });
        group.patterns.insert(pattern);
        group.bytes += bytes;
    }
    Placement {
        groups: arrange(groups.into_values().collect()),
        executed_bytes,
        unplaced,
    }
}

/// Orders the groups so that the least code lies between the first and last group of each
/// role that is not that role's. Exhaustive over the orders of up to `MAX_EXHAUSTIVE` groups
/// (three roles make seven); beyond that (four roles make up to fifteen), a local search from
/// the groups shared by most roles first: a group is moved wherever that lowers the cost, until
/// no move does.
fn arrange(mut groups: Vec<Group>) -> Vec<Group> {
    const MAX_EXHAUSTIVE: usize = 8;
    groups.sort_by(|a, b| {
        b.roles
            .len()
            .cmp(&a.roles.len())
            .then(a.roles.cmp(&b.roles))
    });
    let mut order: Vec<usize> = (0..groups.len()).collect();
    let best = if groups.len() > MAX_EXHAUSTIVE {
        improve_by_moves(&groups, order)
    } else {
        let mut best = (interleaved_bytes(&groups, &order), order.clone());
        permute(&mut order, 0, &mut |order| {
            let cost = interleaved_bytes(&groups, order);
            if cost < best.0 {
                best = (cost, order.to_vec());
            }
        });
        best.1
    };
    let mut slots: Vec<Option<Group>> = groups.into_iter().map(Some).collect();
    best.iter()
        .filter_map(|&index| slots[index].take())
        .collect()
}

/// Moves one group at a time to the position that lowers [`interleaved_bytes`] most, until no
/// move lowers it. Each pass is quadratic in the groups, and each accepted move lowers the
/// cost, so it ends.
fn improve_by_moves(groups: &[Group], mut order: Vec<usize>) -> Vec<usize> {
    let mut cost = interleaved_bytes(groups, &order);
    loop {
        let mut best: Option<(u64, Vec<usize>)> = None;
        for from in 0..order.len() {
            for to in 0..order.len() {
                if from == to {
                    continue;
                }
                let mut moved = order.clone();
                let group = moved.remove(from);
                moved.insert(to, group);
                let moved_cost = interleaved_bytes(groups, &moved);
                if moved_cost < best.as_ref().map_or(cost, |(c, _)| *c) {
                    best = Some((moved_cost, moved));
                }
            }
        }
        match best {
            Some((lower, moved)) => {
                cost = lower;
                order = moved;
            }
            None => return order,
        }
    }
}

/// For each role, the bytes of other roles' groups between its first and last group, summed.
fn interleaved_bytes(groups: &[Group], order: &[usize]) -> u64 {
    let roles: BTreeSet<&String> = groups.iter().flat_map(|group| &group.roles).collect();
    roles
        .iter()
        .map(|role| {
            let has = |index: &usize| groups[*index].roles.contains(*role);
            let first = order.iter().position(has).unwrap_or(0);
            let last = order.iter().rposition(has).unwrap_or(0);
            order[first..=last]
                .iter()
                .filter(|index| !has(index))
                .map(|&index| groups[index].bytes)
                .sum::<u64>()
        })
        .sum()
}

/// Calls `visit` with every permutation of `items[start..]` (after `items[..start]`).
fn permute(items: &mut [usize], start: usize, visit: &mut dyn FnMut(&[usize])) {
    if start == items.len() {
        visit(items);
        return;
    }
    for next in start..items.len() {
        items.swap(start, next);
        permute(items, start + 1, visit);
        items.swap(start, next);
    }
}

/// The linker script. It describes `.text` with the placed functions only, inserted where the
/// linker puts `.text` anyway (before `.init`); lld then appends every other function to the
/// same `.text`, after them. Keeping one `.text` matters to tools that read only that section's
/// symbols, valgrind among them, and the training itself runs under valgrind. (GNU ld makes a
/// second `.text` of the rest instead: crates/strait/build.rs applies the script where lld
/// links.) The markers let `tests/perf/run.sh` tell how much of the script applied to a build.
pub fn script(placement: &Placement, compiler: &str, trained_on: &str) -> String {
    let mut out = String::new();
    for line in [
        "/* The code the proxies run, placed together at the start of .text so that an idle proxy",
        " * keeps a few megabytes of its code resident rather than most of it. Generated by",
        " * tests/perf/hot-text.sh (do not edit); see docs/architecture.md, \"One binary\".",
    ] {
        out.push_str(line);
        out.push('\n');
    }
    // crates/strait/build.rs reads this line to warn when another compiler builds the binary.
    let _ = writeln!(out, " * Compiler: {compiler}");
    let _ = writeln!(out, " * Trained on: {trained_on}");
    let _ = writeln!(
        out,
        " * {} patterns; {} KiB executed, {} KiB placed, in groups by the roles that ran them:",
        placement.patterns().len(),
        placement.executed_bytes / 1024,
        placement.placed_bytes() / 1024
    );
    for group in &placement.groups {
        let roles: Vec<&str> = group.roles.iter().map(String::as_str).collect();
        let _ = writeln!(
            out,
            " *   {}: {} KiB",
            roles.join(" + "),
            group.bytes / 1024
        );
    }
    out.push_str(" */\n");
    out.push_str("SECTIONS\n{\n  .text :\n  {\n    __strait_hot_text_start = .;\n");
    for pattern in placement.patterns() {
        let _ = writeln!(
            out,
            "    *(.text.{pattern} .text.{pattern}.* .text.unlikely.{pattern} .text.unlikely.{pattern}.*)"
        );
    }
    out.push_str("    __strait_hot_text_end = .;\n  }\n}\nINSERT BEFORE .init;\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = "\
version: 1
creator: callgrind-3.19.0
cmd:  /opt/strait standalone demo
events: Ir
ob=(1) /usr/lib/x86_64-linux-gnu/libc.so.6
fl=(1) ???
fn=(1) malloc
3 10
ob=(2) /opt/strait
fl=(2) ???
fn=(2) main
5 7
cob=(1)
cfi=(1)
cfn=(1)
calls=1 0
5 10
cfn=(3) _ZN6strait3run17h0123456789abcdefE
calls=1 0
5 9
fn=(3)
1 9
ob=(1)
fn=(4) free
1 2
ob=(2)
fn=(5) _ZN4core3ptr13drop_in_place17h00000000000000aaE
1 1
totals: 48
";

    #[test]
    fn executed_functions_follow_name_compression_and_the_object() {
        let profile = executed_functions(PROFILE, "strait").expect("parses");
        assert_eq!(profile.role, "standalone");
        let names: Vec<_> = profile.functions.iter().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "_ZN4core3ptr13drop_in_place17h00000000000000aaE",
                "_ZN6strait3run17h0123456789abcdefE",
                "main",
            ]
        );
    }

    #[test]
    fn symbols_and_compiler_are_read_from_an_elf_file() {
        let path = std::env::current_exe().expect("test binary");
        let bytes = std::fs::read(&path).expect("readable");
        let elf = object::File::parse(&*bytes).expect("an ELF file");
        let sizes = function_sizes(&elf).expect("symbols");
        let this = sizes.keys().find(|name| {
            name.contains("symbols_and_compiler_are_read_from_an_elf_file")
                && name.starts_with("_ZN")
        });
        assert!(
            this.is_some(),
            "no symbol for this test among {}",
            sizes.len()
        );
        let compiler = compiler(&elf).expect(".comment");
        assert!(compiler.starts_with("rustc 1."), "{compiler}");
    }

    #[test]
    fn an_undefined_name_id_is_an_error_with_its_line() {
        let error = executed_functions("ob=(1) /opt/strait\nfn=(9)\n", "strait")
            .expect_err("fn=(9) was never defined");
        assert_eq!(error.to_string(), "line 2");
        assert!(format!("{error:#}").contains("(9)"), "{error:#}");
    }

    #[test]
    fn recursion_levels_are_one_function_and_an_unfinished_profile_is_an_error() {
        let profile = "ob=(1) /opt/strait\nfn=(1) main'2\n1 1\nfn=(2) main\n1 1\ntotals: 2\n";
        let executed = executed_functions(profile, "strait").expect("parses");
        assert_eq!(executed.functions, BTreeSet::from(["main".to_string()]));
        let unfinished = profile.trim_end_matches("totals: 2\n");
        let error = executed_functions(unfinished, "strait").expect_err("no totals: line");
        assert!(error.to_string().contains("incomplete profile"), "{error}");
    }

    #[test]
    fn llvm_suffixes_are_left_to_the_pattern() {
        assert_eq!(
            without_llvm_suffix("_ZN4core3fmt5Write9write_str17h0123456789abcdefE.11302"),
            "_ZN4core3fmt5Write9write_str17h0123456789abcdefE"
        );
        assert_eq!(
            without_llvm_suffix("_RNvCs1_3foo3bar.llvm.4242"),
            "_RNvCs1_3foo3bar"
        );
        assert_eq!(without_llvm_suffix("main"), "main");
        assert_eq!(without_llvm_suffix("bn_mul.mont"), "bn_mul.mont");
    }

    #[test]
    fn unhashed_cuts_at_the_hash_marker() {
        assert_eq!(
            unhashed("_ZN6strait3run17h0123456789abcdefE"),
            Some("_ZN6strait3run17h")
        );
        assert_eq!(
            unhashed("_ZN6strait3run17h0123456789abcdefE.llvm.42"),
            Some("_ZN6strait3run17h")
        );
        // A path component that happens to contain `17h` is not the hash.
        assert_eq!(
            unhashed("_ZN4demo5a17hx3run17h0123456789abcdefE"),
            Some("_ZN4demo5a17hx3run17h")
        );
        assert_eq!(unhashed("main"), None);
        assert_eq!(unhashed("_RNvCs1234_6strait3run"), None);
    }

    fn sizes(entries: &[(&str, u64)]) -> HashMap<String, u64> {
        entries
            .iter()
            .map(|(name, size)| (name.to_string(), *size))
            .collect()
    }

    fn profile(role: &str, functions: &[&str]) -> Profile {
        Profile {
            role: role.to_string(),
            functions: functions.iter().map(|name| name.to_string()).collect(),
        }
    }

    #[test]
    fn place_names_generic_instances_in_full_when_the_shared_name_is_mostly_unused() {
        let sizes = sizes(&[
            ("main", 100),
            ("_ZN6strait3run17h0123456789abcdefE", 2_000),
            // One used instance of a generic function among many unused ones.
            ("_ZN5serde11deserialize17h0000000000000001E", 1_000),
            ("_ZN5serde11deserialize17h0000000000000002E", 9_000),
            ("_ZN5serde11deserialize17h0000000000000003E", 9_000),
            // Two instances, both small: the shared name is cheap enough.
            ("_ZN4core4drop17h0000000000000001E", 50),
            ("_ZN4core4drop17h0000000000000002E", 60),
        ]);
        let executed = profile(
            "standalone",
            &[
                "main",
                "_ZN6strait3run17h0123456789abcdefE",
                "_ZN5serde11deserialize17h0000000000000001E",
                "_ZN4core4drop17h0000000000000001E",
                "memcpy_in_assembly",
            ],
        );
        let placement = place(&[executed], &sizes);
        assert_eq!(
            placement.patterns(),
            [
                "_ZN4core4drop17h????????????????E",
                "_ZN5serde11deserialize17h0000000000000001E",
                "_ZN6strait3run17h????????????????E",
                "main",
            ]
        );
        assert_eq!(placement.executed_bytes, 100 + 2_000 + 1_000 + 50);
        assert_eq!(placement.placed_bytes(), 100 + 2_000 + 1_000 + 110);
        assert_eq!(placement.unplaced, 1);
    }

    #[test]
    fn place_keeps_each_roles_code_contiguous() {
        // Three roles: every pair shares some code, all three share the runtime.
        let sizes = sizes(&[
            ("runtime", 5_000),
            ("gateway_only", 1_000),
            ("node_only", 1_000),
            ("waypoint_only", 1_000),
            ("http_gateway_waypoint", 3_000),
            ("hbone_node_waypoint", 2_000),
            ("ca_gateway_node", 10),
        ]);
        let profiles = [
            profile(
                "standalone",
                &[
                    "runtime",
                    "gateway_only",
                    "http_gateway_waypoint",
                    "ca_gateway_node",
                ],
            ),
            profile(
                "node",
                &[
                    "runtime",
                    "node_only",
                    "hbone_node_waypoint",
                    "ca_gateway_node",
                ],
            ),
            profile(
                "waypoint",
                &[
                    "runtime",
                    "waypoint_only",
                    "http_gateway_waypoint",
                    "hbone_node_waypoint",
                ],
            ),
        ];
        let placement = place(&profiles, &sizes);
        assert_eq!(placement.placed_bytes(), 13_010);
        let patterns = placement.patterns();
        // Three overlapping roles in a line cannot all be contiguous: at most five of the seven
        // groups can sit where every role that ran them is an interval. The best layout cuts
        // the two smallest groups it can, the 10-byte one and one of the 1,000-byte ones; a
        // layout that split the runtime or a shared protocol group would cost thousands.
        let mut foreign = 0;
        for role in ["standalone", "node", "waypoint"] {
            let own = &profiles
                .iter()
                .find(|profile| profile.role == role)
                .expect("profile")
                .functions;
            let positions: Vec<usize> = (0..patterns.len())
                .filter(|&index| own.contains(patterns[index]))
                .collect();
            let (first, last) = (positions[0], positions[positions.len() - 1]);
            foreign += patterns[first..=last]
                .iter()
                .filter(|pattern| !own.contains(**pattern))
                .map(|pattern| sizes[*pattern])
                .sum::<u64>();
        }
        assert_eq!(foreign, 1_010, "{patterns:?}");
    }

    /// Four roles make more groups than can be ordered exhaustively. The groups here are the
    /// sizes (KiB) one training produced: shared by most roles first, the waypoint's own code
    /// came last, past the standalone's 1.6 MB, and 6.7 MB lay inside roles' spans that were not
    /// theirs.
    #[test]
    fn four_roles_are_arranged_by_moving_groups_until_no_move_helps() {
        let kib = [
            ("gateway node standalone waypoint", 783),
            ("gateway node waypoint", 602),
            ("gateway standalone waypoint", 296),
            ("node standalone waypoint", 61),
            ("gateway node", 0),
            ("gateway standalone", 133),
            ("node standalone", 4),
            ("node waypoint", 1280),
            ("standalone waypoint", 50),
            ("gateway", 134),
            ("node", 400),
            ("standalone", 1593),
            ("waypoint", 150),
        ];
        let groups: Vec<Group> = kib
            .iter()
            .map(|&(roles, kib)| Group {
                roles: roles.split(' ').map(str::to_string).collect(),
                patterns: BTreeSet::from([roles.replace(' ', "_")]),
                bytes: kib * 1024,
            })
            .collect();
        let listed: Vec<usize> = (0..groups.len()).collect();
        assert_eq!(interleaved_bytes(&groups, &listed), 6_688 * 1024);
        let arranged = arrange(groups);
        let order: Vec<usize> = (0..arranged.len()).collect();
        let cost = interleaved_bytes(&arranged, &order);
        assert!(cost <= 403 * 1024, "{} KiB interleaved", cost / 1024);
    }

    #[test]
    fn script_puts_the_patterns_first_in_text_between_markers() {
        let placement = Placement {
            groups: vec![Group {
                roles: BTreeSet::from(["standalone".to_string()]),
                patterns: BTreeSet::from([
                    "_ZN6strait3run17h????????????????E".to_string(),
                    "main".to_string(),
                ]),
                bytes: 8192,
            }],
            executed_bytes: 4096,
            unplaced: 0,
        };
        let text = script(&placement, "rustc 1.95.0 (59807616e 2026-04-14)", "test");
        assert!(text.contains(
            "    *(.text._ZN6strait3run17h????????????????E \
                 .text._ZN6strait3run17h????????????????E.* \
                 .text.unlikely._ZN6strait3run17h????????????????E \
                 .text.unlikely._ZN6strait3run17h????????????????E.*)\n"
        ));
        assert!(text.contains(
            "    *(.text.main .text.main.* .text.unlikely.main .text.unlikely.main.*)\n"
        ));
        assert!(
            text.contains("  .text :\n  {\n    __strait_hot_text_start = .;\n    *(.text._ZN6")
        );
        assert!(text.contains("main.*)\n    __strait_hot_text_end = .;\n  }\n}\n"));
        assert!(text.trim_end().ends_with("INSERT BEFORE .init;"));
        assert!(text.contains("\n * Compiler: rustc 1.95.0 (59807616e 2026-04-14)\n"));
        assert!(text.contains("2 patterns; 4 KiB executed, 8 KiB placed"));
        assert!(text.contains(" *   standalone: 8 KiB\n */\n"));
    }
}
