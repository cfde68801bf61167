//! Lending a copy of a book to a member, across two aggregates and a process
//! manager: reserve the copy, charge the member's fee, then lend the copy.
//! When the charge is declined, refused or does not happen in time, the
//! reservation is released: the compensating action.

use std::collections::BTreeMap;
use std::time::Duration;

use bookshelf::process::{CommandBus, Dispatch, DispatchError, ProcessManager};
use bookshelf::{async_trait, Aggregate, CommandError, DomainEvent, Envelope, EventStore, Repository};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An invalid transition or a missing aggregate: a typed refusal, never a
/// panic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LendingError {
    #[error("cannot {command} a copy that is {state}")]
    CopyTransition { state: &'static str, command: &'static str },
    #[error("{0} does not exist")]
    Unknown(&'static str),
    #[error("{0} already exists")]
    Exists(&'static str),
    #[error("loan {0} is not the copy's loan")]
    OtherLoan(String),
}

// ---- the copy ----

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum CopyCommand {
    Register,
    Reserve { loan: String, member: String, fee: u32 },
    Release { loan: String, reason: String },
    Lend { loan: String },
    Return { loan: String },
}

#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CopyEvent {
    CopyRegistered,
    CopyReserved { loan: String, member: String, fee: u32 },
    CopyReleased { loan: String, reason: String },
    CopyLent { loan: String, member: String },
    CopyReturned { loan: String },
}

impl DomainEvent for CopyEvent {}

/// A copy's states: `Available` → `Reserved` → `Lent` → `Available`, or
/// `Reserved` → `Available` when the loan is called off.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub enum Copy {
    #[default]
    Unknown,
    Available,
    Reserved {
        loan: String,
        member: String,
    },
    Lent {
        loan: String,
        member: String,
    },
}

impl Copy {
    fn name(&self) -> &'static str {
        match self {
            Copy::Unknown => "unknown",
            Copy::Available => "available",
            Copy::Reserved { .. } => "reserved",
            Copy::Lent { .. } => "lent",
        }
    }
}

#[async_trait]
impl Aggregate for Copy {
    const CATEGORY: &'static str = "copy";
    type Command = CopyCommand;
    type Event = CopyEvent;
    type Error = LendingError;
    type Services = ();

    async fn handle(&self, command: &CopyCommand, _: &()) -> Result<Vec<CopyEvent>, LendingError> {
        let same = |current: &String, asked: &String| {
            if current == asked {
                Ok(())
            } else {
                Err(LendingError::OtherLoan(asked.clone()))
            }
        };
        match (command, self) {
            (CopyCommand::Register, Copy::Unknown) => Ok(vec![CopyEvent::CopyRegistered]),
            (CopyCommand::Register, _) => Err(LendingError::Exists("the copy")),
            (_, Copy::Unknown) => Err(LendingError::Unknown("the copy")),
            (CopyCommand::Reserve { loan, member, fee }, Copy::Available) => Ok(vec![CopyEvent::CopyReserved {
                loan: loan.clone(),
                member: member.clone(),
                fee: *fee,
            }]),
            (CopyCommand::Release { loan, reason }, Copy::Reserved { loan: current, .. }) => {
                same(current, loan)?;
                Ok(vec![CopyEvent::CopyReleased {
                    loan: loan.clone(),
                    reason: reason.clone(),
                }])
            }
            (CopyCommand::Lend { loan }, Copy::Reserved { loan: current, member }) => {
                same(current, loan)?;
                Ok(vec![CopyEvent::CopyLent {
                    loan: loan.clone(),
                    member: member.clone(),
                }])
            }
            (CopyCommand::Return { loan }, Copy::Lent { loan: current, .. }) => {
                same(current, loan)?;
                Ok(vec![CopyEvent::CopyReturned { loan: loan.clone() }])
            }
            (command, state) => Err(LendingError::CopyTransition {
                state: state.name(),
                command: match command {
                    CopyCommand::Register => "register",
                    CopyCommand::Reserve { .. } => "reserve",
                    CopyCommand::Release { .. } => "release",
                    CopyCommand::Lend { .. } => "lend",
                    CopyCommand::Return { .. } => "return",
                },
            }),
        }
    }

    fn apply(&mut self, event: &CopyEvent) {
        *self = match event {
            CopyEvent::CopyRegistered | CopyEvent::CopyReleased { .. } | CopyEvent::CopyReturned { .. } => {
                Copy::Available
            }
            CopyEvent::CopyReserved { loan, member, .. } => Copy::Reserved {
                loan: loan.clone(),
                member: member.clone(),
            },
            CopyEvent::CopyLent { loan, member } => Copy::Lent {
                loan: loan.clone(),
                member: member.clone(),
            },
        };
    }
}

// ---- the member ----

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum MemberCommand {
    Join {
        balance: u32,
    },
    Charge {
        loan: String,
        amount: u32,
    },
    /// Gives back what a loan that was called off charged.
    Refund {
        loan: String,
        amount: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MemberEvent {
    MemberJoined {
        balance: u32,
    },
    MemberCharged {
        loan: String,
        amount: u32,
    },
    /// Not enough on the account: a fact, recorded, that the loan reacts to.
    ChargeDeclined {
        loan: String,
        amount: u32,
        balance: u32,
    },
    /// A charge given back: its loan was called off.
    MemberRefunded {
        loan: String,
        amount: u32,
    },
}

impl DomainEvent for MemberEvent {}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub enum Member {
    #[default]
    Unknown,
    Active {
        balance: u32,
    },
}

#[async_trait]
impl Aggregate for Member {
    const CATEGORY: &'static str = "member";
    type Command = MemberCommand;
    type Event = MemberEvent;
    type Error = LendingError;
    type Services = ();

    async fn handle(&self, command: &MemberCommand, _: &()) -> Result<Vec<MemberEvent>, LendingError> {
        match (command, self) {
            (MemberCommand::Join { balance }, Member::Unknown) => {
                Ok(vec![MemberEvent::MemberJoined { balance: *balance }])
            }
            (MemberCommand::Join { .. }, _) => Err(LendingError::Exists("the member")),
            (MemberCommand::Charge { .. } | MemberCommand::Refund { .. }, Member::Unknown) => {
                Err(LendingError::Unknown("the member"))
            }
            (MemberCommand::Refund { loan, amount }, Member::Active { .. }) => Ok(vec![MemberEvent::MemberRefunded {
                loan: loan.clone(),
                amount: *amount,
            }]),
            (MemberCommand::Charge { loan, amount }, Member::Active { balance }) => Ok(vec![if amount <= balance {
                MemberEvent::MemberCharged {
                    loan: loan.clone(),
                    amount: *amount,
                }
            } else {
                MemberEvent::ChargeDeclined {
                    loan: loan.clone(),
                    amount: *amount,
                    balance: *balance,
                }
            }]),
        }
    }

    fn apply(&mut self, event: &MemberEvent) {
        match (event, self) {
            (MemberEvent::MemberJoined { balance }, state) => *state = Member::Active { balance: *balance },
            (MemberEvent::MemberCharged { amount, .. }, Member::Active { balance }) => {
                *balance = balance.saturating_sub(*amount)
            }
            (MemberEvent::MemberRefunded { amount, .. }, Member::Active { balance }) => {
                *balance = balance.saturating_add(*amount)
            }
            _ => {}
        }
    }
}

// ---- the loan process ----

/// The events of both aggregates that the loan process reacts to: the same
/// type names and fields, so that they decode from the shared log.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LoanEvent {
    CopyReserved { loan: String, member: String, fee: u32 },
    CopyLent { loan: String },
    CopyReleased { loan: String },
    MemberCharged { loan: String },
    ChargeDeclined { loan: String },
}

impl DomainEvent for LoanEvent {}

/// What the loan process sends.
#[derive(Debug, Clone, PartialEq)]
pub enum LoanCommand {
    Copy { id: String, command: CopyCommand },
    Member { id: String, command: MemberCommand },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// The copy is reserved; the charge was sent.
    Charging,
    /// The member paid; lending the copy was sent.
    Lending,
    /// Done: the copy is lent.
    Lent,
    /// Calling off: releasing the copy was sent.
    Releasing,
    /// Done: the reservation was released.
    Released,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loan {
    pub copy: String,
    pub member: String,
    pub fee: u32,
    pub step: Step,
    /// When the charge must have happened, or the loan is called off.
    pub deadline: DateTime<Utc>,
    /// Why it was called off.
    pub reason: Option<String>,
    /// Whether the member's charge has been read.
    #[serde(default)]
    pub charged: bool,
}

/// Reserve, charge, lend; release the copy when the charge fails or times
/// out, and refund a charge that lands after the loan was called off. Idempotency keys are `LOAN/charge`, `LOAN/lend` and `LOAN/release`:
/// the same for a step however often it is taken, so a replay after a crash
/// sends nothing twice, and a timeout and a declined charge release once.
///
/// On a log of several partitions, the events of the copy and of the member
/// come in any order relative to each other (each stream's own events in
/// order): a replay may read a loan's charge before its reservation. The
/// outcome of a charge read first is kept until the reservation comes.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct LoanProcess {
    pub loans: BTreeMap<String, Loan>,
    /// Charges read before their loan's reservation: `true` when paid,
    /// `false` when declined.
    #[serde(default)]
    pub charged_early: BTreeMap<String, bool>,
    /// How long a charge may take.
    pub charge_within_ms: u64,
}

impl LoanProcess {
    pub fn with_timeout(timeout: Duration) -> Self {
        LoanProcess {
            charge_within_ms: timeout.as_millis() as u64,
            ..LoanProcess::default()
        }
    }

    fn lend(loan_id: &str, loan: &mut Loan) -> Dispatch<LoanCommand> {
        loan.step = Step::Lending;
        Dispatch::new(
            format!("{loan_id}/lend"),
            LoanCommand::Copy {
                id: loan.copy.clone(),
                command: CopyCommand::Lend {
                    loan: loan_id.to_owned(),
                },
            },
        )
    }

    /// Gives the member back a charge whose loan was called off: only once
    /// both the charge and the release are in the log.
    fn refund(loan_id: &str, loan: &Loan) -> Dispatch<LoanCommand> {
        Dispatch::new(
            format!("{loan_id}/refund"),
            LoanCommand::Member {
                id: loan.member.clone(),
                command: MemberCommand::Refund {
                    loan: loan_id.to_owned(),
                    amount: loan.fee,
                },
            },
        )
    }

    fn release(loan_id: &str, loan: &mut Loan, reason: String) -> Dispatch<LoanCommand> {
        loan.step = Step::Releasing;
        loan.reason = Some(reason.clone());
        Dispatch::new(
            format!("{loan_id}/release"),
            LoanCommand::Copy {
                id: loan.copy.clone(),
                command: CopyCommand::Release {
                    loan: loan_id.to_owned(),
                    reason,
                },
            },
        )
    }
}

impl ProcessManager for LoanProcess {
    type Event = LoanEvent;
    type Command = LoanCommand;

    fn react(&mut self, event: &Envelope<LoanEvent>) -> Vec<Dispatch<LoanCommand>> {
        let within = if self.charge_within_ms == 0 {
            30_000
        } else {
            self.charge_within_ms
        };
        match &event.payload {
            LoanEvent::CopyReserved { loan, member, fee } => {
                let deadline = event.recorded_at + chrono::Duration::milliseconds(within as i64);
                let entry = self.loans.entry(loan.clone()).or_insert(Loan {
                    copy: event.stream_id.entity_id().to_owned(),
                    member: member.clone(),
                    fee: *fee,
                    step: Step::Charging,
                    deadline,
                    reason: None,
                    charged: false,
                });
                match self.charged_early.remove(loan) {
                    Some(true) => return vec![Self::lend(loan, entry)],
                    Some(false) => return vec![Self::release(loan, entry, "the charge was declined".into())],
                    None => {}
                }
                vec![Dispatch::new(
                    format!("{loan}/charge"),
                    LoanCommand::Member {
                        id: member.clone(),
                        command: MemberCommand::Charge {
                            loan: loan.clone(),
                            amount: *fee,
                        },
                    },
                )]
            }
            LoanEvent::MemberCharged { loan: id } => match self.loans.get_mut(id) {
                Some(loan) if loan.step == Step::Charging => {
                    loan.charged = true;
                    vec![Self::lend(id, loan)]
                }
                // The charge landed after the loan was called off (its
                // deadline passed) and the copy is back: the member gets it
                // back. While the release is under way, its outcome decides
                // (it is refused when the copy was lent after all).
                Some(loan) => {
                    loan.charged = true;
                    if loan.step == Step::Released {
                        vec![Self::refund(id, loan)]
                    } else {
                        Vec::new()
                    }
                }
                None => {
                    self.charged_early.insert(id.clone(), true);
                    Vec::new()
                }
            },
            LoanEvent::ChargeDeclined { loan: id } => match self.loans.get_mut(id) {
                Some(loan) if loan.step == Step::Charging => {
                    vec![Self::release(id, loan, "the charge was declined".into())]
                }
                Some(_) => Vec::new(),
                None => {
                    self.charged_early.insert(id.clone(), false);
                    Vec::new()
                }
            },
            LoanEvent::CopyLent { loan } => {
                if let Some(loan) = self.loans.get_mut(loan) {
                    loan.step = Step::Lent;
                }
                Vec::new()
            }
            LoanEvent::CopyReleased { loan: id } => match self.loans.get_mut(id) {
                Some(loan) => {
                    loan.step = Step::Released;
                    if loan.charged {
                        vec![Self::refund(id, loan)]
                    } else {
                        Vec::new()
                    }
                }
                None => Vec::new(),
            },
        }
    }

    fn tick(&mut self, now: DateTime<Utc>) -> Vec<Dispatch<LoanCommand>> {
        self.loans
            .iter_mut()
            .filter(|(_, loan)| loan.step == Step::Charging && loan.deadline <= now)
            .map(|(id, loan)| Self::release(id, loan, "the charge did not happen in time".into()))
            .collect()
    }

    fn rejected(&mut self, dispatch: &Dispatch<LoanCommand>, reason: &str) -> Vec<Dispatch<LoanCommand>> {
        let Some((id, step)) = dispatch.key.rsplit_once('/') else {
            return Vec::new();
        };
        match (self.loans.get_mut(id), step) {
            (Some(loan), "charge") if loan.step == Step::Charging => {
                vec![Self::release(id, loan, format!("the charge was refused: {reason}"))]
            }
            (Some(loan), _) => {
                // Lending or releasing refused: the copy is not in the state
                // this loan left it in. Nothing more to undo here; say why.
                loan.reason = Some(format!("{step} refused: {reason}"));
                Vec::new()
            }
            (None, _) => Vec::new(),
        }
    }
}

/// Sends the loan's commands to the two aggregates, once per key.
pub struct LendingBus<S: EventStore> {
    pub copies: Repository<Copy, S>,
    pub members: Repository<Member, S>,
}

impl<S: EventStore + Clone> LendingBus<S> {
    pub fn new(store: S) -> Self {
        LendingBus {
            copies: Repository::new(store.clone(), ()),
            members: Repository::new(store, ()),
        }
    }
}

fn dispatch_error<E: std::error::Error>(error: CommandError<E>) -> DispatchError {
    match error {
        CommandError::Rejected(reason) => DispatchError::Rejected(reason.to_string()),
        other => DispatchError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl<S: EventStore> CommandBus<LoanCommand> for LendingBus<S> {
    async fn dispatch(&self, dispatch: &Dispatch<LoanCommand>) -> Result<(), DispatchError> {
        // The runner's metadata: the causing event's correlation id, the
        // event as cause, its trace continued; the loan id when it has none.
        let mut metadata = dispatch.metadata.clone();
        if metadata.correlation_id.is_none() {
            metadata.correlation_id = Some(dispatch.key.split('/').next().unwrap_or_default().to_owned());
        }
        let key = dispatch.key.as_str();
        match &dispatch.command {
            LoanCommand::Copy { id, command } => {
                self.copies
                    .execute_once(id, key, command, metadata)
                    .await
                    .map_err(dispatch_error)?;
            }
            LoanCommand::Member { id, command } => {
                self.members
                    .execute_once(id, key, command, metadata)
                    .await
                    .map_err(dispatch_error)?;
            }
        }
        Ok(())
    }
}
