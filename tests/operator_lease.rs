//! Leader election over the in-memory Lease store, with tokio's clock paused: every wait is
//! virtual, and the fake wall clock the Lease is written with moves with tokio's clock.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ferry::operator::lease::{
    Attempt, Clock, Ended, FakeClock, GateError, LEASE_NAME, LeaderElector, LeaseConfig,
    LeaseStore, MemoryLeases, run_while_leading,
};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    jiff::{SignedDuration, Timestamp},
};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

type Elector = LeaderElector<MemoryLeases, FakeClock>;

fn clock() -> FakeClock {
    FakeClock::new(Timestamp::UNIX_EPOCH + SignedDuration::from_hours(500_000))
}

fn candidate(store: &MemoryLeases, clock: &FakeClock, identity: &str) -> Elector {
    LeaderElector::new(store.clone(), clock.clone(), LeaseConfig::new(identity))
}

fn spec(store: &MemoryLeases) -> LeaseSpec {
    store
        .lease(LEASE_NAME)
        .and_then(|lease| lease.spec)
        .expect("the Lease exists")
}

fn renewed_at(store: &MemoryLeases) -> Timestamp {
    spec(store).renew_time.expect("the Lease was renewed").0
}

/// A candidate competing in a task until its token is cancelled.
struct Running {
    leading: watch::Receiver<bool>,
    task: JoinHandle<Ended>,
    stop: CancellationToken,
}

fn run(elector: Elector) -> Running {
    let stop = CancellationToken::new();
    let (leading, task) = elector.spawn(stop.clone());
    Running {
        leading,
        task,
        stop,
    }
}

/// Waits (in virtual time, at most ten minutes) until `running` leads or follows.
async fn until_leading(running: &mut Running, leads: bool) {
    tokio::time::timeout(
        Duration::from_secs(600),
        running.leading.wait_for(|now| *now == leads),
    )
    .await
    .unwrap_or_else(|_| panic!("leading never became {leads}"))
    .unwrap_or_else(|_| panic!("the election ended before leading became {leads}"));
}

async fn ended(running: Running) -> Ended {
    running.stop.cancel();
    running.task.await.expect("the election task")
}

#[tokio::test(start_paused = true)]
async fn acquires_an_absent_lease() {
    let (store, clock) = (MemoryLeases::new(), clock());
    let a = candidate(&store, &clock, "a");
    assert_eq!(a.try_acquire_or_renew().await.ok(), Some(Attempt::Leading));
    let acquired = spec(&store);
    assert_eq!(acquired.holder_identity.as_deref(), Some("a"));
    assert_eq!(acquired.lease_duration_seconds, Some(15));
    assert_eq!(acquired.lease_transitions, Some(0));
    assert_eq!(acquired.acquire_time, acquired.renew_time);
    assert_eq!(acquired.renew_time.as_ref().map(|t| t.0), Some(clock.now()));

    clock.advance(Duration::from_secs(2));
    assert_eq!(a.try_acquire_or_renew().await.ok(), Some(Attempt::Leading));
    let renewed = spec(&store);
    assert_eq!(renewed.acquire_time, acquired.acquire_time);
    assert_eq!(renewed.renew_time.map(|t| t.0), Some(clock.now()));
    assert_eq!(renewed.lease_transitions, Some(0));

    let mut running = run(a);
    until_leading(&mut running, true).await;
    assert_eq!(ended(running).await, Ended::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_second_candidate_waits_while_the_holder_renews() {
    let (store, clock) = (MemoryLeases::new(), clock());
    let mut a = run(candidate(&store, &clock, "a"));
    until_leading(&mut a, true).await;
    let first_renewal = renewed_at(&store);
    let b = run(candidate(&store, &clock, "b"));

    tokio::time::sleep(Duration::from_secs(120)).await;

    assert!(*a.leading.borrow());
    assert!(!*b.leading.borrow());
    assert!(
        !b.leading.has_changed().unwrap_or(true),
        "b led at some point"
    );
    let held = spec(&store);
    assert_eq!(held.holder_identity.as_deref(), Some("a"));
    assert_eq!(held.lease_transitions, Some(0));
    assert!(renewed_at(&store).duration_since(first_renewal) >= SignedDuration::from_secs(110));
    assert_eq!(ended(b).await, Ended::Stopped);
    assert_eq!(ended(a).await, Ended::Stopped);
}

#[tokio::test(start_paused = true)]
async fn takes_over_after_the_holder_stops_renewing_for_the_lease_duration() {
    let (store, clock) = (MemoryLeases::new(), clock());
    let mut a = run(candidate(&store, &clock, "a"));
    until_leading(&mut a, true).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    // The holder dies without giving the Lease up.
    a.task.abort();
    let last_renewal = renewed_at(&store);

    let mut b = run(candidate(&store, &clock, "b"));
    until_leading(&mut b, true).await;
    let waited = clock.now().duration_since(last_renewal);
    assert!(
        waited > SignedDuration::from_secs(15),
        "took over after {waited}"
    );
    assert!(
        waited <= SignedDuration::from_secs(17),
        "took over after {waited}"
    );
    let taken = spec(&store);
    assert_eq!(taken.holder_identity.as_deref(), Some("b"));
    assert_eq!(taken.lease_transitions, Some(1));
    assert_eq!(taken.acquire_time.map(|t| t.0), Some(clock.now()));

    let a_again = candidate(&store, &clock, "a");
    assert_eq!(
        a_again.try_acquire_or_renew().await.ok(),
        Some(Attempt::Following {
            holder: Some("b".into())
        })
    );
    assert_eq!(ended(b).await, Ended::Stopped);
}

#[tokio::test(start_paused = true)]
async fn concurrent_acquire_has_exactly_one_winner() {
    let (store, clock) = (MemoryLeases::new(), clock());
    let (a, b) = (
        candidate(&store, &clock, "a"),
        candidate(&store, &clock, "b"),
    );
    // Both find no Lease and both create it: one create is refused.
    let (for_a, for_b) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let answers = [for_a.ok(), for_b.ok()];
    assert_eq!(leaders(&answers), 1, "{answers:?}");
    assert_eq!(store.conflicts(), 1);
    let winner = spec(&store).holder_identity;

    // Both find the same expired Lease and replace it at the same resourceVersion.
    clock.advance(Duration::from_secs(60));
    let (c, d) = (
        candidate(&store, &clock, "c"),
        candidate(&store, &clock, "d"),
    );
    let (for_c, for_d) = tokio::join!(c.try_acquire_or_renew(), d.try_acquire_or_renew());
    let answers = [for_c.ok(), for_d.ok()];
    assert_eq!(leaders(&answers), 1, "{answers:?}");
    assert_eq!(store.conflicts(), 2);
    let taken = spec(&store);
    assert_ne!(taken.holder_identity, winner);
    assert_eq!(taken.lease_transitions, Some(1));
}

fn leaders(answers: &[Option<Attempt>]) -> usize {
    answers
        .iter()
        .filter(|answer| **answer == Some(Attempt::Leading))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_write_at_a_stale_resource_version_is_a_conflict() {
    let store = MemoryLeases::new();
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(LEASE_NAME.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec::default()),
    };
    let first = store.create(&lease).await.expect("created");
    assert!(store.create(&lease).await.is_err(), "created twice");
    let second = store.replace(&first).await.expect("replaced");
    assert_ne!(
        first.metadata.resource_version,
        second.metadata.resource_version
    );
    assert!(
        store.replace(&first).await.is_err(),
        "replaced at a stale version"
    );
    assert!(
        store.replace(&lease).await.is_err(),
        "replaced without a version"
    );
    assert_eq!(store.conflicts(), 3);
}

#[tokio::test(start_paused = true)]
async fn releases_the_lease_on_shutdown_so_another_takes_over_at_once() {
    let (store, clock) = (MemoryLeases::new(), clock());
    let mut a = run(candidate(&store, &clock, "a"));
    until_leading(&mut a, true).await;
    let mut b = run(candidate(&store, &clock, "b"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!*b.leading.borrow());

    let mut a_leading = a.leading.clone();
    assert_eq!(ended(a).await, Ended::Stopped);
    assert!(!*a_leading.borrow_and_update());
    assert_eq!(spec(&store).holder_identity, None);
    let released = clock.now();

    until_leading(&mut b, true).await;
    let waited = clock.now().duration_since(released);
    assert!(
        waited <= SignedDuration::from_secs(2),
        "took over after {waited}"
    );
    assert_eq!(spec(&store).holder_identity.as_deref(), Some("b"));
    assert_eq!(ended(b).await, Ended::Stopped);
}

#[tokio::test(start_paused = true)]
async fn steps_down_when_renewals_fail_past_the_deadline() {
    let (store, clock) = (MemoryLeases::new(), clock());
    let mut a = run(candidate(&store, &clock, "a"));
    until_leading(&mut a, true).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    store.set_unavailable(true);
    let last_renewal = renewed_at(&store);

    until_leading(&mut a, false).await;
    let led_for = clock.now().duration_since(last_renewal);
    assert!(
        led_for >= SignedDuration::from_secs(10),
        "stepped down after {led_for}"
    );
    assert!(
        led_for < SignedDuration::from_secs(15),
        "stepped down after {led_for}"
    );
    assert_eq!(a.task.await.ok(), Some(Ended::SteppedDown));
    // It could not give the Lease up; nobody else takes it before it expires.
    assert_eq!(spec(&store).holder_identity.as_deref(), Some("a"));

    store.set_unavailable(false);
    let mut b = run(candidate(&store, &clock, "b"));
    until_leading(&mut b, true).await;
    assert!(clock.now().duration_since(last_renewal) > SignedDuration::from_secs(15));
    assert_eq!(ended(b).await, Ended::Stopped);
}

/// Sets its flag when dropped: the gated work was stopped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Waits (in virtual time, at most ten minutes) until `flag` is set.
async fn until_set(flag: &AtomicBool) {
    tokio::time::timeout(Duration::from_secs(600), async {
        while !flag.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never set"));
}

#[tokio::test(start_paused = true)]
async fn the_controllers_run_only_while_leading_and_stop_at_once_when_the_lease_is_lost() {
    let (store, clock) = (MemoryLeases::new(), clock());
    let b = candidate(&store, &clock, "b");
    assert_eq!(b.try_acquire_or_renew().await.ok(), Some(Attempt::Leading));

    let (started, dropped) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let work = {
        let (started, dropped) = (started.clone(), dropped.clone());
        async move {
            let _dropped = Dropped(dropped);
            started.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
    };
    let gauge = Arc::new(Mutex::new(Vec::new()));
    let on_leading = {
        let gauge = gauge.clone();
        move |leads| gauge.lock().expect("gauge").push(leads)
    };
    let shutdown = CancellationToken::new();
    let a = candidate(&store, &clock, "a");
    let gate = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { run_while_leading(a, work, &shutdown, on_leading).await }
    });

    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        !started.load(Ordering::SeqCst),
        "ran while another held the Lease"
    );

    assert_eq!(b.release().await.ok(), Some(true));
    let released = clock.now();
    until_set(&started).await;
    let waited = clock.now().duration_since(released);
    // One retry period, plus `until_set`'s 100 ms between looks.
    assert!(
        waited <= SignedDuration::from_millis(2_100),
        "started after {waited}"
    );
    assert_eq!(spec(&store).holder_identity.as_deref(), Some("a"));

    // Someone else takes the Lease (an operator with a clock far ahead, say).
    let mut lease = store.lease(LEASE_NAME).expect("the Lease");
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some("c".into());
    }
    store.replace(&lease).await.expect("taken by c");

    let result = tokio::time::timeout(Duration::from_secs(600), gate)
        .await
        .expect("the gate ended")
        .expect("the gate task");
    assert!(matches!(result, Err(GateError::Lost { .. })), "{result:?}");
    assert!(dropped.load(Ordering::SeqCst), "the work still runs");
    assert_eq!(*gauge.lock().expect("gauge"), [true, false]);
    assert_eq!(spec(&store).holder_identity.as_deref(), Some("c"));
    assert!(!shutdown.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn a_follower_that_shuts_down_never_runs_the_controllers() {
    let (store, clock) = (MemoryLeases::new(), clock());
    let b = candidate(&store, &clock, "b");
    assert_eq!(b.try_acquire_or_renew().await.ok(), Some(Attempt::Leading));
    let started = Arc::new(AtomicBool::new(false));
    let work = {
        let started = started.clone();
        async move { started.store(true, Ordering::SeqCst) }
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.cancel();
    });
    let a = candidate(&store, &clock, "a");
    let result = run_while_leading(a, work, &shutdown, |_| {}).await;
    assert!(result.is_ok(), "{result:?}");
    assert!(!started.load(Ordering::SeqCst));
    assert_eq!(spec(&store).holder_identity.as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_controllers_before_the_lease_is_given_up() {
    let (store, clock) = (MemoryLeases::new(), clock());
    let shutdown = CancellationToken::new();
    let held_when_stopped = Arc::new(Mutex::new(None));
    let work = {
        let (store, shutdown, held) = (store.clone(), shutdown.clone(), held_when_stopped.clone());
        async move {
            shutdown.cancelled().await;
            // Finishing in-flight work takes a while; the Lease is still ours meanwhile.
            tokio::time::sleep(Duration::from_secs(20)).await;
            *held.lock().expect("held") = Some(spec(&store).holder_identity);
        }
    };
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        stop.cancel();
    });
    let a = candidate(&store, &clock, "a");
    let result = run_while_leading(a, work, &shutdown, |_| {}).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        *held_when_stopped.lock().expect("held"),
        Some(Some("a".to_owned()))
    );
    assert_eq!(spec(&store).holder_identity, None);
}
