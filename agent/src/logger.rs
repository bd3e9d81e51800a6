//! A minimal stderr logger for the `log` facade (aya logs through it too).

use log::{Level, LevelFilter, Metadata, Record};

struct Stderr {
    level: Level,
}

impl log::Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("zerospan {:<5} {}", r.level(), r.args());
        }
    }

    fn flush(&self) {}
}

pub fn init(verbose: u8) {
    let level = if verbose > 0 {
        Level::Debug
    } else {
        Level::Info
    };
    let filter = if verbose > 0 {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    if log::set_boxed_logger(Box::new(Stderr { level })).is_ok() {
        log::set_max_level(filter);
    }
}
