//! A small SVG line chart, so the report needs no plotting tool.

/// One named series of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A line chart with a categorical x axis (`xs`, evenly spaced) and a linear y axis from 0.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    xs: &[f64],
    series: &[Series],
) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 360.0, 70.0, 150.0, 40.0, 50.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x_at = |x: f64| {
        let i = xs.iter().position(|v| *v == x).unwrap_or(0) as f64;
        left + if xs.len() > 1 {
            i * plot_w / (xs.len() - 1) as f64
        } else {
            plot_w / 2.0
        }
    };
    let y_at = |y: f64| top + plot_h - y / y_max * plot_h;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{title}</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{x_label}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{y_label}</text>
"#,
        w / 2.0,
        top + plot_h,
        left + plot_w,
        top + plot_h,
        top + plot_h,
        left + plot_w / 2.0,
        h - 10.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
    );
    for tick in 0..=4 {
        let y = y_max * f64::from(tick) / 4.0;
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><line x1=\"{left}\" y1=\"{1}\" x2=\"{}\" y2=\"{1}\" stroke=\"#ddd\"/>\n",
            left - 6.0,
            y_at(y),
            short(y),
            left + plot_w,
        );
    }
    for x in xs {
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            x_at(*x),
            top + plot_h + 18.0,
            short(*x)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", x_at(*x), y_at(*y)))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n",
            s.colour,
            points.join(" ")
        );
        for (x, y) in &s.points {
            svg += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>\n",
                x_at(*x),
                y_at(*y),
                s.colour
            );
        }
        let ly = top + 16.0 * i as f64;
        svg += &format!(
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
            left + plot_w + 12.0,
            ly,
            s.colour,
            left + plot_w + 30.0,
            ly + 5.0,
            s.name
        );
    }
    svg + "</svg>\n"
}

fn short(v: f64) -> String {
    if v.fract() == 0.0 && v < 1000.0 {
        format!("{v:.0}")
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
