//! Server-side assignors of the KIP-848 consumer protocol.
//!
//! Both take the members' subscriptions and the previous target assignment
//! and return the new target. `uniform` keeps every partition where it was
//! when that does not unbalance the group, so a join or leave moves as few
//! partitions as possible; `range` gives each member contiguous ranges of
//! every topic it subscribes to, as the classic range assignor does.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

/// Topic id -> partitions.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

pub const UNIFORM: &str = "uniform";
pub const RANGE: &str = "range";
pub const ASSIGNORS: &[&str] = &[UNIFORM, RANGE];

/// What an assignor sees of one member.
pub struct MemberSpec<'a> {
    pub member_id: &'a str,
    /// Ids of the topics it subscribes to that exist.
    pub topics: BTreeSet<Uuid>,
    pub previous: Option<&'a Assignment>,
}

/// `partitions`: topic id -> partition count, for every subscribed topic.
pub fn assign(
    assignor: &str,
    members: &[MemberSpec<'_>],
    partitions: &BTreeMap<Uuid, i32>,
) -> HashMap<String, Assignment> {
    match assignor {
        RANGE => range(members, partitions),
        _ => uniform(members, partitions),
    }
}

fn range(
    members: &[MemberSpec<'_>],
    partitions: &BTreeMap<Uuid, i32>,
) -> HashMap<String, Assignment> {
    let mut out: HashMap<String, Assignment> = members
        .iter()
        .map(|m| (m.member_id.to_string(), Assignment::new()))
        .collect();
    for (&topic, &count) in partitions {
        let mut subscribers: Vec<&str> = members
            .iter()
            .filter(|m| m.topics.contains(&topic))
            .map(|m| m.member_id)
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        subscribers.sort_unstable();
        let n = subscribers.len() as i32;
        let (base, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, member) in subscribers.iter().enumerate() {
            let take = base + i32::from((i as i32) < extra);
            if take > 0 {
                out.get_mut(*member)
                    .expect("every member has an entry")
                    .entry(topic)
                    .or_default()
                    .extend(next..next + take);
            }
            next += take;
        }
    }
    out
}

fn uniform(
    members: &[MemberSpec<'_>],
    partitions: &BTreeMap<Uuid, i32>,
) -> HashMap<String, Assignment> {
    let mut sorted: Vec<&MemberSpec<'_>> = members.iter().collect();
    sorted.sort_unstable_by_key(|m| m.member_id);
    let mut owned: Vec<BTreeSet<(Uuid, i32)>> = vec![BTreeSet::new(); sorted.len()];
    let mut taken: BTreeSet<(Uuid, i32)> = BTreeSet::new();

    // Stickiness: keep what each member had, while it still subscribes.
    for (i, m) in sorted.iter().enumerate() {
        for (topic, parts) in m.previous.into_iter().flatten() {
            let Some(&count) = partitions.get(topic) else {
                continue;
            };
            if !m.topics.contains(topic) {
                continue;
            }
            for &p in parts {
                if p < count && taken.insert((*topic, p)) {
                    owned[i].insert((*topic, p));
                }
            }
        }
    }
    // New or orphaned partitions go to the least loaded subscriber.
    for (&topic, &count) in partitions {
        let subscribers: Vec<usize> = sorted
            .iter()
            .enumerate()
            .filter(|(_, m)| m.topics.contains(&topic))
            .map(|(i, _)| i)
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        for p in 0..count {
            if taken.contains(&(topic, p)) {
                continue;
            }
            let &least = subscribers
                .iter()
                .min_by_key(|&&i| (owned[i].len(), i))
                .expect("not empty");
            owned[least].insert((topic, p));
            taken.insert((topic, p));
        }
    }
    // Balance: move one partition at a time from the most to the least
    // loaded member that may take it, until no move narrows the spread.
    loop {
        let mut order: Vec<usize> = (0..sorted.len()).collect();
        order.sort_unstable_by_key(|&i| (owned[i].len(), i));
        let mut moved = false;
        'search: for &to in &order {
            for &from in order.iter().rev() {
                if owned[from].len() <= owned[to].len() + 1 {
                    break;
                }
                let candidate = owned[from]
                    .iter()
                    .rev()
                    .find(|(topic, _)| sorted[to].topics.contains(topic))
                    .copied();
                if let Some(tp) = candidate {
                    owned[from].remove(&tp);
                    owned[to].insert(tp);
                    moved = true;
                    break 'search;
                }
            }
        }
        if !moved {
            break;
        }
    }
    sorted
        .iter()
        .zip(owned)
        .map(|(m, parts)| {
            let mut a = Assignment::new();
            for (topic, p) in parts {
                a.entry(topic).or_default().insert(p);
            }
            (m.member_id.to_string(), a)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(id: &'a str, topics: &[Uuid], previous: Option<&'a Assignment>) -> MemberSpec<'a> {
        MemberSpec {
            member_id: id,
            topics: topics.iter().copied().collect(),
            previous,
        }
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(|s| s.len()).sum()
    }

    fn check_complete(out: &HashMap<String, Assignment>, partitions: &BTreeMap<Uuid, i32>) {
        let mut seen = BTreeSet::new();
        for a in out.values() {
            for (t, ps) in a {
                for p in ps {
                    assert!(seen.insert((*t, *p)), "{t}/{p} assigned twice");
                }
            }
        }
        let total: i32 = partitions.values().sum();
        assert_eq!(seen.len() as i32, total, "every partition assigned once");
    }

    #[test]
    fn uniform_balances_and_is_sticky() {
        let t = Uuid::new_v4();
        let partitions = BTreeMap::from([(t, 6)]);
        let first = assign(
            UNIFORM,
            &[spec("a", &[t], None), spec("b", &[t], None)],
            &partitions,
        );
        check_complete(&first, &partitions);
        assert_eq!(count(&first["a"]), 3);
        // A third member takes one partition from each; nothing else moves.
        let second = assign(
            UNIFORM,
            &[
                spec("a", &[t], Some(&first["a"])),
                spec("b", &[t], Some(&first["b"])),
                spec("c", &[t], None),
            ],
            &partitions,
        );
        check_complete(&second, &partitions);
        for m in ["a", "b", "c"] {
            assert_eq!(count(&second[m]), 2, "{m}: {:?}", second[m]);
        }
        for m in ["a", "b"] {
            assert!(
                second[m][&t].is_subset(&first[m][&t]),
                "{m} kept its partitions"
            );
        }
    }

    #[test]
    fn uniform_respects_subscriptions() {
        let (t1, t2) = (Uuid::new_v4(), Uuid::new_v4());
        let partitions = BTreeMap::from([(t1, 4), (t2, 4)]);
        let out = assign(
            UNIFORM,
            &[
                spec("a", &[t1], None),
                spec("b", &[t1, t2], None),
                spec("c", &[t2], None),
            ],
            &partitions,
        );
        check_complete(&out, &partitions);
        assert!(!out["a"].contains_key(&t2));
        assert!(!out["c"].contains_key(&t1));
        let counts: Vec<usize> = ["a", "b", "c"].iter().map(|m| count(&out[*m])).collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
    }

    #[test]
    fn uniform_scales_to_many_members() {
        let topics: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
        let partitions: BTreeMap<Uuid, i32> = topics.iter().map(|t| (*t, 50)).collect();
        let ids: Vec<String> = (0..50).map(|i| format!("m{i:02}")).collect();
        let specs: Vec<MemberSpec<'_>> = ids.iter().map(|id| spec(id, &topics, None)).collect();
        let out = assign(UNIFORM, &specs, &partitions);
        check_complete(&out, &partitions);
        assert!(out.values().all(|a| count(a) == 10));
    }

    #[test]
    fn range_gives_contiguous_ranges_per_topic() {
        let t = Uuid::new_v4();
        let partitions = BTreeMap::from([(t, 7)]);
        let out = assign(
            RANGE,
            &[
                spec("b", &[t], None),
                spec("a", &[t], None),
                spec("c", &[t], None),
            ],
            &partitions,
        );
        check_complete(&out, &partitions);
        assert_eq!(out["a"][&t], BTreeSet::from([0, 1, 2]));
        assert_eq!(out["b"][&t], BTreeSet::from([3, 4]));
        assert_eq!(out["c"][&t], BTreeSet::from([5, 6]));
    }
}
