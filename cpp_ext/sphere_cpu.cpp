// Multithreaded CPU kernels of osr_sdk._spherical. Geometry in double, values in float32.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <system_error>
#include <thread>
#include <vector>

#include "sphere.h"

namespace osr {
namespace {

// Runs fn(begin, end) over [0, n) in chunks of `grain` items handed out dynamically to `threads`
// threads (0 = all hardware threads), the calling thread included.
template <typename F>
void parallel_for(int64_t n, int threads, int64_t grain, const F& fn) {
  if (n <= 0) return;
  int64_t nt = threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency());
  nt = std::min(nt, (n + grain - 1) / grain);
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t b; (b = next.fetch_add(grain)) < n;) fn(b, std::min(b + grain, n));
  };
  std::vector<std::thread> pool;
  try {
    for (int64_t t = 1; t < nt; ++t) pool.emplace_back(worker);
  } catch (const std::system_error&) {
    // Fewer threads than asked for: the ones started (and this one) share all the work.
  }
  worker();
  for (auto& t : pool) t.join();
}

}  // namespace

void sample_views_cpu(const SampleParams& p, int threads) {
  const int64_t plane = static_cast<int64_t>(p.h) * p.w;
  parallel_for(static_cast<int64_t>(p.N) * p.h, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int n = static_cast<int>(item / p.h), i = static_cast<int>(item % p.h);
      const double* v = p.views + 4 * n;
      const double lon0 = std::remainder(v[0], 2 * kPi), sphi0 = std::sin(v[1]),
                   cphi0 = std::cos(v[1]);
      const double y = -view_pixel_coord<double>(i, p.h) * v[3];
      float* out = p.out + n * p.C * plane + static_cast<int64_t>(i) * p.w;
      for (int j = 0; j < p.w; ++j) {
        const double x = view_pixel_coord<double>(j, p.w) * v[2];
        double dlon, lat;
        gnomonic_inverse(x, y, sphi0, cphi0, &dlon, &lat);
        erp_interp(p.erp, p.H, p.W, p.C, p.interp, 0, erp_x_of_lon(lon0 + dlon, p.W),
                   erp_y_of_lat(lat, p.H), out + j, plane);
      }
    }
  });
}

void merge_accumulate_cpu(const MergeParams& p, int threads) {
  // Per view: centre sines/cosines, inverse half-extents and the cosine of a cap radius that
  // contains the whole view (the corner's angular distance, plus a hair for rounding).
  struct View {
    double lon0, slon0, clon0, sphi0, cphi0, inv_tx, inv_ty, cos_cap;
  };
  std::vector<View> views(p.N);
  for (int n = 0; n < p.N; ++n) {
    const double* v = p.views + 4 * n;
    const double lon0 = std::remainder(v[0], 2 * kPi);
    views[n] = {lon0,         std::sin(lon0), std::cos(lon0), std::sin(v[1]), std::cos(v[1]),
                1.0 / v[2],   1.0 / v[3],     std::cos(std::atan(std::hypot(v[2], v[3])) + 1e-7)};
  }
  std::vector<double> slon(p.W), clon(p.W);
  for (int x = 0; x < p.W; ++x) {
    const double lon = ((x + 0.5) / p.W) * 2 * kPi - kPi;
    slon[x] = std::sin(lon);
    clon[x] = std::cos(lon);
  }
  const int C = p.C, C1 = p.C + 1;
  const int64_t plane = static_cast<int64_t>(p.h) * p.w;
  const double inv_feather = p.blend == kFeather ? 1.0 / p.feather : 0.0;
  const double col_margin = 2 * kPi / p.W;

  parallel_for(p.H, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      const double lat = kPi / 2 - ((y + 0.5) / p.H) * kPi;
      const double sphi = std::sin(lat), cphi = std::cos(lat);
      float* acc_row = p.acc + y * p.W * C1;
      for (int n = 0; n < p.N; ++n) {
        const View& V = views[n];
        // Columns of this row within the cap: cos(dist) = sphi sphi0 + cphi cphi0 cos(dlon)
        // >= cos_cap, i.e. cos(dlon) >= num / den (den >= 0 as |lat|, |lat0| <= pi/2).
        const double num = V.cos_cap - sphi * V.sphi0, den = cphi * V.cphi0;
        if (num > den) continue;  // the whole row is farther than the cap
        int k0 = 0, k1 = p.W - 1;
        if (num > -den) {
          const double half = std::acos(num / den) + col_margin;
          k0 = static_cast<int>(std::floor(erp_x_of_lon(V.lon0 - half, p.W)));
          k1 = static_cast<int>(std::ceil(erp_x_of_lon(V.lon0 + half, p.W)));
          if (k1 - k0 + 1 >= p.W) k0 = 0, k1 = p.W - 1;
        }
        const float* patch = p.patches + n * C * plane;
        for (int k = k0; k <= k1; ++k) {
          const int x = pmod(k, p.W);
          const double sd = slon[x] * V.clon0 - clon[x] * V.slon0;  // sin(lon - lon0)
          const double cd = clon[x] * V.clon0 + slon[x] * V.slon0;  // cos(lon - lon0)
          double xc, yc;
          const double cosc = gnomonic_forward(sphi, cphi, sd, cd, V.sphi0, V.cphi0, &xc, &yc);
          if (cosc <= 0) continue;
          const double u = xc / cosc * V.inv_tx, v = yc / cosc * V.inv_ty;
          if (!(std::fabs(u) < 1 && std::fabs(v) < 1)) continue;
          const double wgt = p.blend == kFeather
                                 ? feather_axis(u, inv_feather) * feather_axis(v, inv_feather)
                                 : 1.0;
          const PatchTap<double> tap(p.h, p.w, (1 - v) * 0.5 * p.h - 0.5,
                                     (u + 1) * 0.5 * p.w - 0.5);
          float* a = acc_row + static_cast<int64_t>(x) * C1;
          for (int c = 0; c < C; ++c) a[c] += static_cast<float>(wgt * tap(patch + c * plane));
          a[C] += static_cast<float>(wgt);
        }
      }
    }
  });
}

void merge_finalize_cpu(const FinalizeParams& p, int threads) {
  const int C = p.C;
  parallel_for(static_cast<int64_t>(p.H) * p.W, threads, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* a = p.acc + i * (C + 1);
      float* o = p.out + i * C;
      const float wsum = a[C];
      for (int c = 0; c < C; ++c) o[c] = wsum != 0 ? a[c] / wsum : 0.0f;
    }
  });
}

}  // namespace osr
