//! `--compare`: two scenarios interleaved round by round, so that machine noise
//! hits both alike, and their ratio.

use crate::{
    Args,
    measure::{Measured, print_header, print_row, run},
    scenario::{Clients, Scenario, Target, prepare},
};

/// --compare A,B: the two scenarios interleaved, A B A B…, then their totals and B / A.
pub(crate) async fn compare(clients: &mut Clients, args: &Args) -> Result<(), String> {
    let &[first, second] = args.compare.as_slice() else {
        return Err("--compare takes two scenarios, such as grpc-floor,cache-get".to_owned());
    };
    if args.compare.contains(&Scenario::BareFloor) && clients.bare_channels.is_empty() {
        return Err("bare-floor needs the tool to start its own service (no --addr, no --cluster)".to_owned());
    }
    prepare(clients, first).await?;
    prepare(clients, second).await?;
    if !args.json {
        print_header();
    }
    for &concurrency in &args.concurrency {
        let concurrency = concurrency.max(1);
        let mut totals = [Measured::empty(), Measured::empty()];
        for _ in 0..args.rounds.max(1) {
            for (total, scenario) in totals.iter_mut().zip([first, second]) {
                let measured = run(
                    clients,
                    scenario,
                    Target::Service,
                    concurrency,
                    args.warmup,
                    args.duration,
                )
                .await;
                print_row(
                    args,
                    scenario,
                    concurrency,
                    Target::Service,
                    &measured,
                    (f64::NAN, None, None),
                );
                total.add(&measured);
            }
        }
        if !args.json {
            println!(
                "totals of {} rounds; ratios are {} / {}:",
                args.rounds.max(1),
                second.name(),
                first.name()
            );
        }
        let [a, b] = &totals;
        print_row(args, first, concurrency, Target::Service, a, (f64::NAN, None, None));
        let ratios = (b.per_second() / a.per_second(), b.micros(0.5) / a.micros(0.5));
        print_row(
            args,
            second,
            concurrency,
            Target::Service,
            b,
            (f64::NAN, Some(ratios.0), Some(ratios.1)),
        );
    }
    Ok(())
}
