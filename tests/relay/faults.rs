//! Crashes and outages: nothing committed is lost.
