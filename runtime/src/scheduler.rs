//! Which sequences run in the next step, and how many tokens each: plain state, no model, no
//! threads, so every policy is testable on its own.
//!
//! Policy: a step visits the classes ([`Priority`]) highest first, and within each, in order,
//! with the token budget left:
//! 1. every running sequence that has finished its prompt decodes one token;
//! 2. running sequences still in their prompt continue it (chunked prefill), oldest first, so a
//!    long prompt never stalls decoding streams;
//! 3. waiting sequences are admitted while there is budget and a free slot, taking adapters in
//!    round-robin order so a burst on one adapter does not starve the others. A sequence whose
//!    adapter is not resident yet stays waiting without blocking the others.
//!
//! So a lower class (shadow scoring) only ever gets what every higher class's work of this
//! step, admissions included, left over: it cannot delay a client's token.

use std::collections::{HashMap, VecDeque};

use loraplex_adapters::AdapterVersion;

use crate::request::Priority;

/// Identifies a request inside the engine.
pub type SeqId = u64;

/// Which adapter version a sequence uses (`None`: the base model): requests for a replaced
/// adapter queue apart from the old version's.
pub type AdapterKey = Option<AdapterVersion>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences running at once (`--max-num-seqs`).
    pub max_running: usize,
    /// Tokens processed per step, prefill and decode together.
    pub max_step_tokens: usize,
    /// Sequences allowed to wait; more are refused as overloaded.
    pub max_waiting: usize,
    /// Tokens of shadow work a step may carry when it also carries interactive work; a step
    /// with none gives shadows the whole budget. On a CPU a step's time grows with its rows
    /// even far below the token budget, so budget left over is not time left over: this cap is
    /// what keeps shadows from slowing the streams they run beside (0: only idle steps).
    pub shadow_step_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_running: 64,
            max_step_tokens: 512,
            max_waiting: 1024,
            shadow_step_tokens: 0,
        }
    }
}

impl SchedulerConfig {
    /// The budget must fit one decode token for every running sequence plus some prefill.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_running == 0 || self.max_waiting == 0 {
            return Err("max_running and max_waiting must be positive".into());
        }
        if self.max_step_tokens <= self.max_running {
            return Err(format!(
                "max_step_tokens ({}) must exceed max_running ({})",
                self.max_step_tokens, self.max_running
            ));
        }
        Ok(())
    }
}

/// The waiting queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

#[derive(Debug, Clone)]
struct Meta {
    adapter: AdapterKey,
    priority: Priority,
    prompt_len: usize,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
}

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub id: SeqId,
    /// Prompt tokens `[start, start+len)` to prefill, or one decode token when `decode`.
    pub start: usize,
    pub len: usize,
    pub decode: bool,
    /// This chunk completes the prompt: the step yields the first generated token.
    pub completes_prompt: bool,
}

/// The waiting sequences of one priority class.
#[derive(Debug, Default)]
struct Class {
    waiting: HashMap<AdapterKey, VecDeque<SeqId>>,
    /// Adapters with waiting sequences, in round-robin order.
    rr: VecDeque<AdapterKey>,
    /// Sequences in `waiting`; each class is bounded by `max_waiting` on its own.
    len: usize,
}

#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    metas: HashMap<SeqId, Meta>,
    running: Vec<SeqId>,
    /// Indexed by `Priority::index`.
    classes: Vec<Class>,
    n_waiting: usize,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        Self {
            cfg,
            metas: HashMap::new(),
            running: Vec::new(),
            classes: Priority::ALL.iter().map(|_| Class::default()).collect(),
            n_waiting: 0,
        }
    }

    pub fn waiting_len(&self) -> usize {
        self.n_waiting
    }

    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.n_waiting == 0
    }

    pub fn running(&self) -> &[SeqId] {
        &self.running
    }

    pub fn enqueue(
        &mut self,
        id: SeqId,
        priority: Priority,
        adapter: AdapterKey,
        prompt_len: usize,
    ) -> Result<(), QueueFull> {
        if self.classes[priority.index()].len >= self.cfg.max_waiting {
            return Err(QueueFull);
        }
        self.metas.insert(
            id,
            Meta {
                adapter: adapter.clone(),
                priority,
                prompt_len,
                prefilled: 0,
            },
        );
        let class = &mut self.classes[priority.index()];
        let q = class.waiting.entry(adapter.clone()).or_default();
        if q.is_empty() {
            class.rr.push_back(adapter);
        }
        q.push_back(id);
        class.len += 1;
        self.n_waiting += 1;
        Ok(())
    }

    /// Removes a sequence wherever it is (finished, cancelled or failed). Returns whether it was known.
    pub fn remove(&mut self, id: SeqId) -> bool {
        let Some(meta) = self.metas.remove(&id) else {
            return false;
        };
        if let Some(pos) = self.running.iter().position(|&r| r == id) {
            self.running.remove(pos);
            return true;
        }
        let class = &mut self.classes[meta.priority.index()];
        if let Some(q) = class.waiting.get_mut(&meta.adapter) {
            if let Some(pos) = q.iter().position(|&w| w == id) {
                q.remove(pos);
                class.len -= 1;
                self.n_waiting -= 1;
                if q.is_empty() {
                    class.waiting.remove(&meta.adapter);
                    class.rr.retain(|a| a != &meta.adapter);
                }
            }
        }
        true
    }

    /// Sequences of every class waiting for an adapter version (to fail them if it cannot load).
    pub fn waiting_for(&self, adapter: &AdapterKey) -> Vec<SeqId> {
        self.classes
            .iter()
            .filter_map(|c| c.waiting.get(adapter))
            .flat_map(|q| q.iter().copied())
            .collect()
    }

    /// Whether any sequence waits for `adapter`.
    pub fn has_waiting(&self, adapter: &AdapterKey) -> bool {
        self.classes.iter().any(|c| c.waiting.contains_key(adapter))
    }

    /// Adapter versions some waiting sequence needs, each once.
    pub fn waiting_adapters(&self) -> impl Iterator<Item = &AdapterVersion> {
        self.classes
            .iter()
            .flat_map(|c| c.rr.iter())
            .filter_map(|a| a.as_ref())
    }

    /// Plans the next step. `ready(adapter)` says whether an adapter is resident; `admit(id)` is
    /// asked before a waiting sequence starts (the engine takes the adapter lease there) and may
    /// refuse, leaving it waiting.
    pub fn schedule(
        &mut self,
        mut ready: impl FnMut(&AdapterKey) -> bool,
        mut admit: impl FnMut(SeqId) -> bool,
    ) -> Vec<Scheduled> {
        let mut budget = self.cfg.max_step_tokens;
        let mut plan = Vec::new();
        for class in Priority::ALL {
            let mut left = budget;
            if class == Priority::Shadow && !plan.is_empty() {
                left = left.min(self.cfg.shadow_step_tokens);
            }
            let given = left;
            self.continue_class(class, &mut left, &mut plan);
            self.admit_class(class, &mut left, &mut plan, &mut ready, &mut admit);
            budget -= given - left;
        }
        plan
    }

    /// The running sequences of one class: decodes first (one token each), then prompts in
    /// progress, oldest first.
    fn continue_class(
        &mut self,
        priority: Priority,
        budget: &mut usize,
        plan: &mut Vec<Scheduled>,
    ) {
        for &id in &self.running {
            if *budget == 0 {
                return;
            }
            let m = &self.metas[&id];
            if m.priority == priority && m.prefilled >= m.prompt_len {
                plan.push(Scheduled {
                    id,
                    start: 0,
                    len: 1,
                    decode: true,
                    completes_prompt: false,
                });
                *budget -= 1;
            }
        }
        for &id in &self.running {
            if *budget == 0 {
                return;
            }
            let m = self.metas.get_mut(&id).expect("running has meta");
            if m.priority == priority && m.prefilled < m.prompt_len {
                let len = (m.prompt_len - m.prefilled).min(*budget);
                plan.push(Scheduled {
                    id,
                    start: m.prefilled,
                    len,
                    decode: false,
                    completes_prompt: m.prefilled + len == m.prompt_len,
                });
                m.prefilled += len;
                *budget -= len;
            }
        }
    }

    /// Admission within one class, round-robin across its adapters that are ready.
    fn admit_class(
        &mut self,
        priority: Priority,
        budget: &mut usize,
        plan: &mut Vec<Scheduled>,
        ready: &mut impl FnMut(&AdapterKey) -> bool,
        admit: &mut impl FnMut(SeqId) -> bool,
    ) {
        let class = &mut self.classes[priority.index()];
        let mut skipped = 0;
        while *budget > 0 && self.running.len() < self.cfg.max_running && skipped < class.rr.len() {
            let adapter = class.rr.pop_front().expect("rr is non-empty");
            let q = class
                .waiting
                .get_mut(&adapter)
                .expect("rr entries have queues");
            let id = *q.front().expect("queues in rr are non-empty");
            if !ready(&adapter) || !admit(id) {
                class.rr.push_back(adapter);
                skipped += 1;
                continue;
            }
            skipped = 0;
            q.pop_front();
            class.len -= 1;
            self.n_waiting -= 1;
            if q.is_empty() {
                class.waiting.remove(&adapter);
            } else {
                class.rr.push_back(adapter);
            }
            self.running.push(id);
            let m = self.metas.get_mut(&id).expect("waiting has meta");
            let len = m.prompt_len.min(*budget);
            plan.push(Scheduled {
                id,
                start: 0,
                len,
                decode: false,
                completes_prompt: len == m.prompt_len,
            });
            m.prefilled = len;
            *budget -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Priority = Priority::Interactive;

    fn v(name: &str) -> AdapterKey {
        Some(AdapterVersion::new(name, 1))
    }

    fn sched(max_running: usize, budget: usize, max_waiting: usize) -> Scheduler {
        Scheduler::new(SchedulerConfig {
            max_running,
            max_step_tokens: budget,
            max_waiting,
            shadow_step_tokens: budget,
        })
    }

    fn all_ready(s: &mut Scheduler) -> Vec<Scheduled> {
        s.schedule(|_| true, |_| true)
    }

    #[test]
    fn sequences_join_and_leave_at_token_granularity() {
        let mut s = sched(4, 100, 10);
        s.enqueue(1, P, None, 5).unwrap();
        let p = all_ready(&mut s);
        assert_eq!(
            p,
            vec![Scheduled {
                id: 1,
                start: 0,
                len: 5,
                decode: false,
                completes_prompt: true
            }]
        );
        s.enqueue(2, P, None, 3).unwrap();
        let p = all_ready(&mut s);
        assert_eq!(p.len(), 2);
        assert!(p[0].decode && p[0].id == 1);
        assert_eq!((p[1].id, p[1].len), (2, 3));
        assert!(s.remove(1));
        let p = all_ready(&mut s);
        assert_eq!(
            p,
            vec![Scheduled {
                id: 2,
                start: 0,
                len: 1,
                decode: true,
                completes_prompt: false
            }]
        );
        assert!(s.remove(2));
        assert!(s.is_idle());
    }

    #[test]
    fn long_prompts_are_chunked_and_never_stall_decoding() {
        let mut s = sched(4, 16, 10);
        s.enqueue(1, P, None, 4).unwrap();
        all_ready(&mut s);
        s.enqueue(2, P, None, 40).unwrap();
        let mut chunks = Vec::new();
        for _ in 0..4 {
            let p = all_ready(&mut s);
            assert!(
                p.iter().any(|x| x.id == 1 && x.decode),
                "the decoding stream runs every step"
            );
            assert!(p.iter().map(|x| x.len).sum::<usize>() <= 16);
            chunks.extend(
                p.iter()
                    .filter(|x| x.id == 2)
                    .map(|x| (x.start, x.len, x.completes_prompt)),
            );
        }
        assert_eq!(
            chunks,
            vec![
                (0, 15, false),
                (15, 15, false),
                (30, 10, true),
                (0, 1, false)
            ]
        );
    }

    #[test]
    fn running_count_is_bounded() {
        let mut s = sched(2, 100, 10);
        for id in 0..5 {
            s.enqueue(id, P, None, 2).unwrap();
        }
        let p = all_ready(&mut s);
        assert_eq!(p.len(), 2);
        assert_eq!((s.running_len(), s.waiting_len()), (2, 3));
    }

    #[test]
    fn admission_is_fair_across_adapters() {
        let mut s = sched(4, 1000, 100);
        for id in 0..20 {
            s.enqueue(id, P, v("burst"), 2).unwrap();
        }
        s.enqueue(100, P, v("quiet"), 2).unwrap();
        s.enqueue(101, P, None, 2).unwrap();
        let p = all_ready(&mut s);
        let ids: Vec<SeqId> = p.iter().map(|x| x.id).collect();
        assert!(ids.contains(&100) && ids.contains(&101), "{ids:?}");
    }

    #[test]
    fn unready_adapters_wait_without_blocking_others() {
        let mut s = sched(4, 1000, 100);
        s.enqueue(1, P, v("cold"), 2).unwrap();
        s.enqueue(2, P, None, 2).unwrap();
        let p = s.schedule(|a| a.is_none(), |_| true);
        assert_eq!(p.iter().map(|x| x.id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(s.waiting_for(&v("cold")), vec![1]);
        let p = s.schedule(|_| true, |_| true);
        assert!(p.iter().any(|x| x.id == 1 && !x.decode));
    }

    #[test]
    fn a_refused_admission_leaves_the_sequence_waiting() {
        let mut s = sched(4, 1000, 100);
        s.enqueue(1, P, v("a"), 2).unwrap();
        assert!(s.schedule(|_| true, |_| false).is_empty());
        assert_eq!(s.waiting_len(), 1);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut s = sched(1, 100, 2);
        s.enqueue(1, P, None, 1).unwrap();
        s.enqueue(2, P, None, 1).unwrap();
        assert_eq!(s.enqueue(3, P, None, 1), Err(QueueFull));
        all_ready(&mut s); // admits 1
        s.enqueue(3, P, None, 1).unwrap();
    }

    #[test]
    fn cancellation_frees_running_and_waiting_slots() {
        let mut s = sched(1, 100, 10);
        s.enqueue(1, P, None, 3).unwrap();
        s.enqueue(2, P, v("x"), 3).unwrap();
        all_ready(&mut s);
        assert!(s.remove(2)); // waiting
        assert!(s.remove(1)); // running
        assert!(!s.remove(1));
        assert!(s.is_idle());
        assert!(all_ready(&mut s).is_empty());
    }

    #[test]
    fn versions_of_one_name_queue_apart() {
        let mut s = sched(4, 1000, 100);
        let (old, new) = (
            Some(AdapterVersion::new("a", 1)),
            Some(AdapterVersion::new("a", 2)),
        );
        s.enqueue(1, P, old.clone(), 2).unwrap();
        s.enqueue(2, P, new.clone(), 2).unwrap();
        let p = s.schedule(|a| a == &new, |_| true);
        assert_eq!(p.iter().map(|x| x.id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(s.waiting_for(&old), vec![1]);
        assert_eq!(
            s.waiting_adapters().collect::<Vec<_>>(),
            vec![old.as_ref().unwrap()]
        );
    }

    const S: Priority = Priority::Shadow;

    #[test]
    fn shadows_get_only_the_budget_interactive_work_leaves() {
        let mut s = sched(8, 10, 10);
        s.enqueue(1, S, v("cand"), 6).unwrap();
        s.enqueue(2, P, None, 7).unwrap();
        let p = all_ready(&mut s);
        // The interactive prompt goes first even though the shadow was queued before it.
        assert_eq!(
            p.iter().map(|x| (x.id, x.len)).collect::<Vec<_>>(),
            vec![(2, 7), (1, 3)]
        );
    }

    #[test]
    fn a_running_shadow_prompt_yields_to_a_new_interactive_one() {
        let mut s = sched(8, 10, 10);
        s.enqueue(1, S, v("cand"), 30).unwrap();
        let p = all_ready(&mut s);
        assert_eq!((p[0].id, p[0].len), (1, 10));
        s.enqueue(2, P, None, 8).unwrap();
        let p = all_ready(&mut s);
        assert_eq!(
            p.iter().map(|x| (x.id, x.start, x.len)).collect::<Vec<_>>(),
            vec![(2, 0, 8), (1, 10, 2)],
            "the new interactive prompt is admitted before the shadow's next chunk"
        );
        // Interactive decodes come before a shadow's decode too.
        s.remove(1);
        s.enqueue(3, S, None, 1).unwrap();
        all_ready(&mut s);
        let p = all_ready(&mut s);
        assert!(p[0].id == 2 && p[0].decode);
    }

    #[test]
    fn shadows_do_not_take_interactive_queue_places() {
        let mut s = sched(1, 100, 2);
        s.enqueue(1, S, None, 1).unwrap();
        s.enqueue(2, S, None, 1).unwrap();
        assert_eq!(s.enqueue(3, S, None, 1), Err(QueueFull));
        s.enqueue(4, P, None, 1).unwrap();
        s.enqueue(5, P, None, 1).unwrap();
        assert_eq!(s.enqueue(6, P, None, 1), Err(QueueFull));
        assert_eq!(s.waiting_len(), 4);
        // With one slot, the interactive request runs first.
        assert_eq!(all_ready(&mut s)[0].id, 4);
    }

    #[test]
    fn beside_interactive_work_shadows_get_only_their_step_share() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_running: 8,
            max_step_tokens: 100,
            max_waiting: 10,
            shadow_step_tokens: 4,
        });
        s.enqueue(1, P, None, 2).unwrap();
        s.enqueue(2, S, None, 30).unwrap();
        let p = all_ready(&mut s);
        assert_eq!(
            p.iter().map(|x| (x.id, x.len)).collect::<Vec<_>>(),
            vec![(1, 2), (2, 4)]
        );
        // Without interactive work, the shadow gets the whole budget.
        s.remove(1);
        let p = all_ready(&mut s);
        assert_eq!(
            p.iter().map(|x| (x.id, x.start, x.len)).collect::<Vec<_>>(),
            vec![(2, 4, 26)]
        );
    }
}
