//! The loan process (examples/lending): the happy path, compensation when
//! the second step fails or times out, and a crash between steps that
//! resumes without carrying out a command twice.

use bookshelf_services::lending::domain;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bookshelf::process::{CommandBus, Dispatch, DispatchError, ProcessRunner};
use bookshelf::{
    async_trait, CommandError, EventStore, InMemoryStore, InMemoryViewStore, Metadata, Repository, StreamId, Version,
};
use bookshelf::{Running, ViewState};
use domain::{
    Copy, CopyCommand, LendingBus, LendingError, LoanCommand, LoanProcess, Member, MemberCommand, MemberEvent, Step,
};

/// The real bus, with faults to order: member commands swallowed (as if
/// lost), or a hang right after the first command whose key ends in
/// `hang_after` was carried out (as if the process died there).
struct Faulty {
    inner: LendingBus<InMemoryStore>,
    lose_member_commands: bool,
    hang_after: Mutex<Option<&'static str>>,
    hung: Arc<tokio::sync::Notify>,
    sent: Arc<Mutex<Vec<String>>>,
}

impl Faulty {
    fn new(store: &InMemoryStore) -> Self {
        Faulty {
            inner: LendingBus::new(store.clone()),
            lose_member_commands: false,
            hang_after: Mutex::new(None),
            hung: Arc::default(),
            sent: Arc::default(),
        }
    }
}

#[async_trait]
impl CommandBus<LoanCommand> for Faulty {
    async fn dispatch(&self, dispatch: &Dispatch<LoanCommand>) -> Result<(), DispatchError> {
        self.sent.lock().unwrap().push(dispatch.key.clone());
        if self.lose_member_commands && matches!(dispatch.command, LoanCommand::Member { .. }) {
            return Ok(());
        }
        self.inner.dispatch(dispatch).await?;
        let hang = {
            let mut hang_after = self.hang_after.lock().unwrap();
            let hang = hang_after.is_some_and(|suffix| dispatch.key.ends_with(suffix));
            if hang {
                *hang_after = None;
            }
            hang
        };
        if hang {
            self.hung.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

struct Library {
    store: InMemoryStore,
    copies: Repository<Copy, InMemoryStore>,
    members: Repository<Member, InMemoryStore>,
}

async fn library() -> Library {
    let store = InMemoryStore::new();
    let copies = Repository::<Copy, _>::new(store.clone(), ());
    let members = Repository::<Member, _>::new(store.clone(), ());
    for (member, balance) in [("ada", 10), ("bob", 1)] {
        members
            .execute(member, &MemberCommand::Join { balance }, Metadata::default())
            .await
            .unwrap();
    }
    for copy in ["dune-1", "dune-2"] {
        copies
            .execute(copy, &CopyCommand::Register, Metadata::default())
            .await
            .unwrap();
    }
    Library { store, copies, members }
}

fn loans(library: &Library, bus: Faulty, saved: &InMemoryViewStore) -> Running<ViewState<LoanProcess>> {
    ProcessRunner::<LoanProcess, _, _>::new("loans", library.store.clone(), bus)
        .persist_to(saved.clone())
        .only_categories(["copy", "member"])
        .tick_every(Duration::from_millis(20))
        .start()
}

impl Library {
    async fn reserve(&self, loan: &str, copy: &str, member: &str) {
        let reserve = CopyCommand::Reserve {
            loan: loan.into(),
            member: member.into(),
            fee: 3,
        };
        self.copies.execute(copy, &reserve, Metadata::default()).await.unwrap();
    }

    /// Waits until `loan` reaches `step`.
    async fn until(&self, process: &Running<ViewState<LoanProcess>>, loan: &str, step: Step) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while process.read(|p| p.loans.get(loan).map(|l| l.step)) != Some(step) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{loan} did not reach {step:?}: {:?}",
                process.read(|p| p.loans.get(loan).cloned())
            )
        });
    }

    async fn member_events(&self, member: &str) -> Vec<MemberEvent> {
        self.store
            .read_stream(&StreamId::for_aggregate("member", member), Version(1))
            .await
            .unwrap()
            .iter()
            .map(|r| {
                bookshelf::EventCodec::<MemberEvent>::new()
                    .decode_envelope(r)
                    .unwrap()
                    .payload
            })
            .collect()
    }
}

fn charges(events: &[MemberEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, MemberEvent::MemberCharged { .. }))
        .count()
}

#[tokio::test]
async fn a_paid_loan_lends_the_copy() {
    let library = library().await;
    let process = loans(&library, Faulty::new(&library.store), &InMemoryViewStore::new());
    library.reserve("loan-1", "dune-1", "ada").await;
    library.until(&process, "loan-1", Step::Lent).await;

    assert_eq!(
        library.copies.load("dune-1").await.unwrap().state,
        Copy::Lent {
            loan: "loan-1".into(),
            member: "ada".into()
        }
    );
    assert_eq!(
        library.members.load("ada").await.unwrap().state,
        Member::Active { balance: 7 }
    );
    process.stop().await.unwrap();
}

#[tokio::test]
async fn a_declined_or_refused_charge_releases_the_reservation() {
    let library = library().await;
    let process = loans(&library, Faulty::new(&library.store), &InMemoryViewStore::new());
    library.reserve("loan-2", "dune-1", "bob").await; // 1 on the account, fee 3
    library.reserve("loan-3", "dune-2", "nobody").await; // no such member
    library.until(&process, "loan-2", Step::Released).await;
    library.until(&process, "loan-3", Step::Released).await;

    for copy in ["dune-1", "dune-2"] {
        assert_eq!(library.copies.load(copy).await.unwrap().state, Copy::Available);
    }
    assert_eq!(
        library.members.load("bob").await.unwrap().state,
        Member::Active { balance: 1 }
    );
    let reasons = process.read(|p| [&p.loans["loan-2"].reason, &p.loans["loan-3"].reason].map(|r| r.clone().unwrap()));
    assert_eq!(reasons[0], "the charge was declined");
    assert!(reasons[1].contains("does not exist"), "{}", reasons[1]);
    // A released copy can be reserved again.
    library.reserve("loan-4", "dune-1", "ada").await;
    library.until(&process, "loan-4", Step::Lent).await;
    process.stop().await.unwrap();
}

#[tokio::test]
async fn a_charge_that_never_happens_times_out_and_releases_once() {
    let library = library().await;
    let saved = InMemoryViewStore::new();
    // The timeout lives in the process's state: seed it as saved.
    bookshelf::ViewStore::save(
        &saved,
        &bookshelf::StoredView {
            checkpoint: bookshelf::Position(0),
            offsets: Default::default(),
            state: serde_json::value::to_raw_value(&LoanProcess::with_timeout(Duration::from_millis(100))).unwrap(),
        },
    )
    .await
    .unwrap();
    let mut bus = Faulty::new(&library.store);
    bus.lose_member_commands = true;
    let sent = bus.sent.clone();
    let process = loans(&library, bus, &saved);
    library.reserve("loan-5", "dune-1", "ada").await;
    library.until(&process, "loan-5", Step::Released).await;

    assert_eq!(library.copies.load("dune-1").await.unwrap().state, Copy::Available);
    assert_eq!(
        process.read(|p| p.loans["loan-5"].reason.clone()).as_deref(),
        Some("the charge did not happen in time")
    );
    // Later ticks do not release again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let releases = sent.lock().unwrap().iter().filter(|k| k.ends_with("/release")).count();
    assert_eq!(releases, 1);
    process.stop().await.unwrap();
}

#[tokio::test]
async fn a_crash_between_steps_resumes_without_charging_twice() {
    let library = library().await;
    let saved = InMemoryViewStore::new();
    let bus = Faulty::new(&library.store);
    *bus.hang_after.lock().unwrap() = Some("/charge");
    let hung = bus.hung.clone();
    let first = loans(&library, bus, &saved);
    library.reserve("loan-6", "dune-1", "ada").await;

    // The charge went through, then the process died before saving.
    tokio::time::timeout(Duration::from_secs(5), hung.notified())
        .await
        .expect("the charge was sent");
    first.abort().await;
    assert_eq!(charges(&library.member_events("ada").await), 1);

    // A new process manager resumes from the last save: it reads the
    // reservation again and sends the charge again, under the same key.
    let bus = Faulty::new(&library.store);
    let sent = bus.sent.clone();
    let second = loans(&library, bus, &saved);
    library.until(&second, "loan-6", Step::Lent).await;
    assert!(
        sent.lock().unwrap().contains(&"loan-6/charge".to_owned()),
        "the charge was sent again"
    );
    let events = library.member_events("ada").await;
    assert_eq!(charges(&events), 1, "and carried out once: {events:?}");
    assert_eq!(
        library.members.load("ada").await.unwrap().state,
        Member::Active { balance: 7 }
    );
    second.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_transitions_are_typed_errors() {
    let library = library().await;
    let lend = CopyCommand::Lend { loan: "loan-7".into() };
    match library.copies.execute("dune-1", &lend, Metadata::default()).await {
        Err(CommandError::Rejected(LendingError::CopyTransition { state, command })) => {
            assert_eq!((state, command), ("available", "lend"));
        }
        other => panic!("expected an invalid transition, got {other:?}"),
    }
    library.reserve("loan-8", "dune-1", "ada").await;
    let release_other = CopyCommand::Release {
        loan: "loan-9".into(),
        reason: "mine".into(),
    };
    assert!(matches!(
        library
            .copies
            .execute("dune-1", &release_other, Metadata::default())
            .await,
        Err(CommandError::Rejected(LendingError::OtherLoan(_)))
    ));
    assert!(matches!(
        library
            .copies
            .execute("dune-9", &CopyCommand::Return { loan: "x".into() }, Metadata::default())
            .await,
        Err(CommandError::Rejected(LendingError::Unknown(_)))
    ));
}

#[tokio::test]
async fn an_event_that_does_not_decode_is_set_aside_and_the_process_goes_on() {
    let library = library().await;
    let letters = bookshelf::InMemoryDeadLetters::new();
    let process = ProcessRunner::<LoanProcess, _, _>::new("loans", library.store.clone(), Faulty::new(&library.store))
        .only_categories(["copy", "member"])
        .dead_letters(letters.clone())
        .start();
    let malformed = bookshelf::NewEvent {
        event_id: bookshelf::EventId::new(),
        event_type: "CopyReserved".into(),
        schema_version: 1,
        metadata: Metadata::default(),
        payload: serde_json::value::to_raw_value(&serde_json::json!({ "loan": 5 })).unwrap(),
    };
    library
        .store
        .append(
            &StreamId::for_aggregate("copy", "broken"),
            bookshelf::ExpectedVersion::Any,
            vec![malformed],
        )
        .await
        .unwrap();
    library.reserve("loan-10", "dune-1", "ada").await;
    library.until(&process, "loan-10", Step::Lent).await;

    let letters = letters.letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].record.event().expect("an event").stream_id.as_str(),
        "copy-broken"
    );
    assert!(letters[0].reason.contains("CopyReserved"), "{}", letters[0].reason);
    process.stop().await.unwrap();
}

/// An event of the loan process, as a replay over several partitions may
/// hand it over.
fn loan_event(stream: &str, version: u64, payload: domain::LoanEvent) -> bookshelf::Envelope<domain::LoanEvent> {
    bookshelf::Envelope {
        event_id: bookshelf::EventId::new(),
        stream_id: StreamId::new(stream),
        version: Version(version),
        position: bookshelf::Position(0),
        recorded_at: chrono::Utc::now(),
        event_type: Default::default(),
        schema_version: 1,
        metadata: Metadata::default(),
        payload,
    }
}

#[test]
fn a_charge_read_before_its_reservation_still_lends_or_releases_the_copy() {
    use bookshelf::process::ProcessManager;
    use domain::LoanEvent;
    let mut process = LoanProcess::default();
    // The member's partition was read first: the charges come before the
    // reservations they answer.
    assert!(process
        .react(&loan_event(
            "member-ada",
            2,
            LoanEvent::MemberCharged { loan: "l1".into() }
        ))
        .is_empty());
    assert!(process
        .react(&loan_event(
            "member-bob",
            2,
            LoanEvent::ChargeDeclined { loan: "l2".into() }
        ))
        .is_empty());
    let reserve = |loan: &str, member: &str| LoanEvent::CopyReserved {
        loan: loan.into(),
        member: member.into(),
        fee: 3,
    };
    let lend = process.react(&loan_event("copy-c1", 2, reserve("l1", "ada")));
    let keys: Vec<&str> = lend.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, ["l1/lend"], "paid already: lent, not charged again");
    let release = process.react(&loan_event("copy-c2", 2, reserve("l2", "bob")));
    let keys: Vec<&str> = release.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, ["l2/release"], "declined already: released");
    assert_eq!(process.loans["l1"].step, Step::Lending);
    assert_eq!(process.loans["l2"].step, Step::Releasing);
    assert!(process.charged_early.is_empty());
}

#[test]
fn a_charge_that_lands_after_the_loan_was_called_off_is_refunded() {
    use bookshelf::process::ProcessManager;
    use domain::LoanEvent;
    let mut process = LoanProcess::with_timeout(Duration::from_millis(100));
    let reserved = loan_event(
        "copy-c1",
        2,
        LoanEvent::CopyReserved {
            loan: "l1".into(),
            member: "ada".into(),
            fee: 3,
        },
    );
    let charge = process.react(&reserved);
    assert_eq!(charge.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(), ["l1/charge"]);
    // The deadline passes before the charge is read: the loan is called off.
    let release = process.tick(reserved.recorded_at + chrono::Duration::seconds(1));
    assert_eq!(
        release.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
        ["l1/release"]
    );
    // Then the charge lands: nothing until the release is in the log (it
    // is refused if the copy was lent after all, by a run that read the
    // charge in time)...
    let charged = loan_event("member-ada", 3, LoanEvent::MemberCharged { loan: "l1".into() });
    assert!(process.react(&charged).is_empty());
    // ...then the member gets it back, under one key.
    let refund = process.react(&loan_event("copy-c1", 3, LoanEvent::CopyReleased { loan: "l1".into() }));
    let keys: Vec<&str> = refund.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, ["l1/refund"]);
    assert!(matches!(
        &refund[0].command,
        LoanCommand::Member { id, command: MemberCommand::Refund { loan, amount: 3 } } if id == "ada" && loan == "l1"
    ));
    let again = process.react(&charged);
    assert_eq!(
        again.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
        ["l1/refund"],
        "read again (a replay): the same key, so refunded once"
    );

    // A loan called off here but lent by an earlier run: the release is
    // refused, the copy's lending read, no refund.
    let mut process = LoanProcess::with_timeout(Duration::from_millis(100));
    let reserved = loan_event(
        "copy-c2",
        2,
        LoanEvent::CopyReserved {
            loan: "l2".into(),
            member: "ada".into(),
            fee: 3,
        },
    );
    process.react(&reserved);
    process.tick(reserved.recorded_at + chrono::Duration::seconds(1));
    assert!(process
        .react(&loan_event(
            "member-ada",
            4,
            LoanEvent::MemberCharged { loan: "l2".into() }
        ))
        .is_empty());
    assert!(process
        .react(&loan_event("copy-c2", 3, LoanEvent::CopyLent { loan: "l2".into() }))
        .is_empty());
    assert_eq!(process.loans["l2"].step, Step::Lent);
}
