//! Read-model snapshot files: a damaged or foreign file is refused, never a panic, and
//! what loads can be digested and written back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perfect21_projections::ReadModels;

fuzz_target!(|data: &[u8]| {
    if let Ok((models, anchor)) = ReadModels::from_snapshot(data) {
        let _ = models.digest();
        let bytes = models.to_snapshot(anchor);
        let (again, _) = ReadModels::from_snapshot(&bytes).expect("a written snapshot loads");
        assert_eq!(again.digest(), models.digest());
    }
});
