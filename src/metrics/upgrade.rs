//! The `pgsteward_upgrade_*` metrics: the step of the upgrade in flight on
//! the primary, as the service reads it from the guard row at every lag
//! check. Alerts use the step's name and `upgrade_in_write_pause`, never
//! its position, so adding a step to the saga moves no alert.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use crate::upgrade::guard::UpgradeStepReading;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: String,
    pub region: String,
}

#[derive(Default)]
pub struct UpgradeMetrics {
    pub step: Gauge,
    pub in_write_pause: Gauge,
    pub step_info: Family<StepLabels, Gauge>,
}

impl UpgradeMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "upgrade_step",
            "Position (1-based) in the upgrade saga of the step in progress on the primary, 0 when none; for display: alerts use upgrade_step_info and upgrade_in_write_pause",
            self.step.clone(),
        );
        r.register(
            "upgrade_in_write_pause",
            "1 while the upgrade in progress on the primary is between PAUSE and RESUME (pause_writes to resume_writes), else 0",
            self.in_write_pause.clone(),
        );
        r.register(
            "upgrade_step_info",
            "1 for the step (journal name) and region of the upgrade in progress on the primary; no series when none",
            self.step_info.clone(),
        );
    }

    /// Replaces every upgrade series with `reading`.
    pub fn set(&self, reading: UpgradeStepReading) {
        self.step.set(i64::from(reading.position));
        self.in_write_pause.set(i64::from(reading.in_write_pause));
        self.step_info.clear();
        if let Some((step, region)) = reading.step {
            self.step_info
                .get_or_create(&StepLabels {
                    step: step.into(),
                    region: region.into(),
                })
                .set(1);
        }
    }
}
