//! History compaction in the owner: the physical part of each compaction (deleting versions
//! no read can see any more), a bounded step per tick so applying never waits long behind it.

use super::{Node, NodeError};
use crate::engine::mvcc::COMPACT_STEP;

impl Node {
    /// One step of physical compaction, at most once per tick, if one is pending.
    pub(super) fn compact_history(&mut self) -> Result<(), NodeError> {
        if self.compacted_tick == self.ticks || !self.engine.compaction_pending() {
            return Ok(());
        }
        self.compacted_tick = self.ticks;
        self.engine.compact_step(COMPACT_STEP)?;
        Ok(())
    }
}
