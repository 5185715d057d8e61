// crew::Future<T> — the one result type of every crew pool — with Promise, continuations,
// coroutine support, when_all and when_any.
#pragma once

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <crew/detail/state.hpp>
#include <crew/errors.hpp>

namespace crew {
inline namespace v0 {

template <class T>
class Future;

namespace detail {
template <class T>
struct FuturePromise;

template <class T>
struct IsFuture : std::false_type {};
template <class T>
struct IsFuture<Future<T>> : std::true_type {};

// What `then(fn)` produces: fn may take the value (nothing for void), or the whole settled Future
// (to see errors too).
// The value form is tried first, so a generic lambda (`[](auto v)`) receives the value.
template <class T, class F>
struct ThenTraits {
  static constexpr bool kTakesValue = [] {
    if constexpr (std::is_void_v<T>) {
      return std::is_invocable_v<F>;
    } else {
      return std::is_invocable_v<F, T>;
    }
  }();
  static constexpr bool kTakesFuture = !kTakesValue && std::is_invocable_v<F, Future<T>>;
  static auto probe() {
    static_assert(kTakesValue || kTakesFuture,
                  "then(fn): fn must take the value (nothing for Future<void>) or the Future");
    if constexpr (kTakesFuture) {
      return std::type_identity<std::invoke_result_t<F, Future<T>>>{};
    } else if constexpr (std::is_void_v<T>) {
      return std::type_identity<std::invoke_result_t<F>>{};
    } else {
      return std::type_identity<std::invoke_result_t<F, T>>{};
    }
  }
  using result = typename decltype(probe())::type;
};

void throw_no_state(const char* what);

// Runs its function inline on the thread that settled the source.
struct InlineExecutor {
  template <class F>
  void post(F&& f) {
    std::forward<F>(f)();
  }
};

// Runs `body`; returns what it threw. The catch block has ended when this returns, so a state
// settled with the result is not also referenced by this thread's in-flight exception (which
// ThreadSanitizer cannot see released: libstdc++'s exception_ptr count is uninstrumented).
template <class Body>
std::exception_ptr capture(Body&& body) noexcept {
  try {
    std::forward<Body>(body)();
    return nullptr;
  } catch (...) {
    return std::current_exception();
  }
}

template <class S, class F, class... A>
void settle_with(S& state, F&& fn, A&&... args) noexcept {
  auto error = capture([&] {
    if constexpr (std::is_void_v<std::invoke_result_t<F, A...>>) {
      std::invoke(std::forward<F>(fn), std::forward<A>(args)...);
      state.set_value();
    } else {
      state.set_value(std::invoke(std::forward<F>(fn), std::forward<A>(args)...));
    }
  });
  if (error) state.set_exception(std::move(error));
}
}  // namespace detail

/// The eventual result of a task: a value of type `T`, or the exception the task threw.
///
/// Move-only, like `std::future`: `get()` and `then()` consume it. Waiting from a pool thread runs
/// other queued tasks of that pool meanwhile, so fork-join recursion never deadlocks, even on a
/// one-thread pool.
///
///     crew::Future<int> f = pool.run([] { return 6 * 7; });
///     int v = f.get();                                  // 42, or rethrows the task's exception
///     auto g = pool.run(fib, 30).then([](long x) { return x * 2; });
///
/// Thread safety: one Future object must not be used from two threads at once; different Futures
/// are independent. The task's writes happen-before `get()`/`wait()` returning and before a
/// continuation runs.
template <class T>
class [[nodiscard]] Future {
 public:
  using value_type = T;
  using promise_type = detail::FuturePromise<T>;

  Future() noexcept = default;
  /// Adopts one reference on `state` (internal).
  explicit Future(detail::State<T>* state) noexcept : state_(state) {}
  Future(Future&&) noexcept = default;
  Future& operator=(Future&&) noexcept = default;

  /// False for a default-constructed or moved-from Future, and after get() or then().
  [[nodiscard]] bool valid() const noexcept { return static_cast<bool>(state_); }
  /// True once the result (value or exception) is available; get() will not block.
  [[nodiscard]] bool ready() const noexcept { return state_ && state_->ready(); }

  /// Waits for the result and returns it, or rethrows the task's exception (same type).
  /// Consumes the Future (valid() is false afterwards).
  T get() {
    check("get");
    state_->wait();
    detail::Ref<detail::State<T>> s = std::move(state_);
    return s->take();
  }
  /// Blocks until ready. On a pool thread, runs other queued tasks meanwhile.
  void wait() const {
    check("wait");
    state_->wait();
  }
  /// Blocks until ready or `timeout` passes; returns ready().
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) const {
    check("wait_for");
    // Saturate: a timeout too long for nanoseconds (seconds::max(), say) means "forever".
    if (std::chrono::duration<double, std::nano>(timeout).count() >= 9.0e18) {
      state_->wait();
      return true;
    }
    return state_->wait_for(std::chrono::duration_cast<std::chrono::nanoseconds>(timeout));
  }

  /// Settles the Future with crew::Cancelled unless it already has a result, and requests stop on
  /// the task's std::stop_token. A task that has not started never runs. Returns true if this call
  /// cancelled it.
  bool cancel() noexcept { return state_ && state_->cancel(); }

  /// Chains `fn` after this Future and returns a Future of its result. `fn` takes the value (or
  /// nothing for Future<void>) and is skipped when this Future failed, which forwards the error; or
  /// it takes the settled `Future<T>` to handle errors itself. Runs inline on the thread that
  /// settles this Future (or right here, if it is already ready); a ThreadPool timeout hands it to
  /// the pool's continuation runner instead of its timer thread. Consumes this Future.
  template <class F>
  auto then(F&& fn) {
    static detail::InlineExecutor inline_executor;
    return then(std::forward<F>(fn), inline_executor);
  }

  /// As then(fn), but `fn` runs through `executor.post(callable)`: a ThreadPool, an EventLoop,
  /// or any type with such a `post`. The executor must outlive the call. An executor that
  /// destroys the callable unrun settles the result with crew::PoolClosed; one whose post()
  /// throws settles it with that exception. The callable is copyable; fn runs at most once.
  template <class F, class Executor>
  auto then(F&& fn, Executor& executor);

  struct Awaiter;
  /// `co_await future` suspends until the result is ready, then resumes on the settling thread.
  Awaiter operator co_await() && noexcept { return Awaiter{std::move(*this)}; }
  Awaiter operator co_await() & noexcept { return Awaiter{std::move(*this)}; }

  /// Internal: gives up ownership of the shared state.
  detail::State<T>* release_state() noexcept { return state_.release_ownership(); }
  /// Internal: the shared state, still owned by this Future.
  detail::State<T>* raw_state() const noexcept { return state_.get(); }

 private:
  void check(const char* what) const {
    if (!state_) detail::throw_no_state(what);
  }
  detail::Ref<detail::State<T>> state_;
};

template <class T>
struct Future<T>::Awaiter : detail::Continuation {
  Future<T> future;
  std::coroutine_handle<> handle{};

  explicit Awaiter(Future<T>&& f) noexcept : future(std::move(f)) {}
  bool await_ready() const {
    future.check("co_await");
    return future.ready();
  }
  bool await_suspend(std::coroutine_handle<> h) noexcept {
    handle = h;
    return future.state_->try_set_continuation(this);
  }
  T await_resume() { return future.get(); }
  void on_ready(detail::StateBase& /*state*/) noexcept override { handle.resume(); }
};

/// The producing side of a Future: fulfil it once with set_value or set_exception.
/// A Promise destroyed unfulfilled settles its Future with crew::Error ("broken promise").
///
/// Thread safety: set_value/set_exception may race with each other and with Future::cancel();
/// exactly one wins and the others return false.
template <class T>
class Promise {
 public:
  Promise() : state_(new detail::State<T>()) {}
  /// Adopts `state`, of a state type of its own (internal).
  explicit Promise(detail::State<T>* state) noexcept : state_(state) {}
  Promise(Promise&&) noexcept = default;
  Promise& operator=(Promise&& o) noexcept {
    if (this != &o) {
      abandon();
      state_ = std::move(o.state_);
      retrieved_ = o.retrieved_;
    }
    return *this;
  }
  ~Promise() { abandon(); }

  /// The Future for this promise; may be called once.
  Future<T> get_future() {
    if (!state_) detail::throw_no_state("Promise::get_future");
    if (retrieved_) throw std::logic_error("crew::Promise::get_future: called twice; call it once");
    retrieved_ = true;
    state_->add_ref();
    return Future<T>(state_.get());
  }
  /// Fulfils the Future; false if it was already settled (for example cancelled).
  template <class... A>
  bool set_value(A&&... value) {
    if (!state_) detail::throw_no_state("Promise::set_value");
    return state_->set_value(std::forward<A>(value)...);
  }
  bool set_exception(std::exception_ptr error) {
    if (!state_) detail::throw_no_state("Promise::set_exception");
    return state_->set_exception(std::move(error));
  }
  /// True once the Future has a result (so set_value would return false).
  [[nodiscard]] bool settled() const noexcept { return state_ && state_->claimed(); }

 private:
  void abandon() noexcept;
  detail::Ref<detail::State<T>> state_;
  bool retrieved_ = false;
};

namespace detail {
std::exception_ptr broken_promise();

std::exception_ptr continuation_dropped();

// Result state of then(): runs fn with the source's outcome, through the executor.
//
// The executor gets a Resume callable. An executor may destroy it without calling it (a pool
// terminated, a closed queue, a custom executor's own policy): the last copy to go then settles
// this state with PoolClosed, so a then() Future always settles. If post() itself throws, that
// exception settles it instead. Copies are allowed (std::function-based executors copy); the
// first call runs fn, and the last copy releases the continuation's reference.
template <class T, class U, class F, class Executor>
class ThenState final : public State<U>, public Continuation {
 public:
  ThenState(F&& fn, Executor& ex) : fn_(std::move(fn)), executor_(&ex) {}
  void start(State<T>* source) noexcept {
    source_ = Ref<State<T>>(source);
    this->add_ref();  // held by the pending continuation, then by the Resume copies
    if (!source->try_set_continuation(this)) on_ready(*source);
  }
  void on_ready(StateBase& /*source*/) noexcept override {
    Ref<ThenState> hold(this);  // the Resume copies may all be gone before post() returns
    this->add_ref();
    auto error = capture([this] { executor_->post(Resume(this)); });
    // Whichever of post() returning and the last unrun copy dying comes second settles.
    if ((flags_.fetch_or(kPosted, std::memory_order_acq_rel) & kDropped) != 0) {
      this->set_exception(error ? std::move(error) : continuation_dropped());
    }
  }

 private:
  static constexpr std::uint32_t kRan = 1;
  static constexpr std::uint32_t kPosted = 2;
  static constexpr std::uint32_t kDropped = 4;

  class Resume {
   public:
    explicit Resume(ThenState* s) noexcept : s_(s) {}
    Resume(const Resume& o) noexcept : s_(o.s_) {
      if (s_ != nullptr) s_->copies_.fetch_add(1, std::memory_order_relaxed);
    }
    Resume(Resume&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
    Resume& operator=(const Resume&) = delete;
    Resume& operator=(Resume&&) = delete;
    ~Resume() {
      if (s_ != nullptr && s_->copies_.fetch_sub(1, std::memory_order_acq_rel) == 1) s_->gone();
    }
    void operator()() const noexcept {
      if ((s_->flags_.fetch_or(kRan, std::memory_order_acq_rel) & kRan) == 0) s_->run();
    }

   private:
    ThenState* s_;
  };

  // The last Resume copy is gone.
  void gone() noexcept {
    const std::uint32_t old = flags_.fetch_or(kDropped, std::memory_order_acq_rel);
    if ((old & (kRan | kPosted)) == kPosted) this->set_exception(continuation_dropped());
    this->release();
  }

  void run() noexcept {
    Future<T> src(source_.release_ownership());
    if constexpr (ThenTraits<T, F>::kTakesFuture) {
      settle_with(*this, std::move(fn_), std::move(src));
    } else if constexpr (std::is_void_v<T>) {
      if (auto error = capture([&] { src.get(); })) {
        this->set_exception(std::move(error));
        return;
      }
      settle_with(*this, std::move(fn_));
    } else {
      std::optional<T> value;
      if (auto error = capture([&] { value.emplace(src.get()); })) {
        this->set_exception(std::move(error));
        return;
      }
      settle_with(*this, std::move(fn_), std::move(*value));
    }
  }

  F fn_;
  Executor* executor_;
  Ref<State<T>> source_;
  std::atomic<std::uint32_t> flags_{0};
  std::atomic<std::uint32_t> copies_{1};
};

template <class T>
struct FuturePromiseBase {
  FuturePromiseBase() : state(new State<T>()) {}
  Future<T> get_return_object() {
    state->add_ref();
    return Future<T>(state.get());
  }
  std::suspend_never initial_suspend() noexcept { return {}; }
  std::suspend_never final_suspend() noexcept { return {}; }
  void unhandled_exception() noexcept { state->set_exception(std::current_exception()); }
  Ref<State<T>> state;
};

template <class T>
struct FuturePromise : FuturePromiseBase<T> {
  template <class V>
  void return_value(V&& v) {
    this->state->set_value(std::forward<V>(v));
  }
};
template <>
struct FuturePromise<void> : FuturePromiseBase<void> {
  void return_void() { this->state->set_value(); }
};
}  // namespace detail

template <class T>
template <class F, class Executor>
auto Future<T>::then(F&& fn, Executor& executor) {
  check("then");
  using U = typename detail::ThenTraits<T, std::decay_t<F>>::result;
  static_assert(!detail::IsFuture<U>::value,
                "then(fn): fn returns a Future; return its value instead, or co_await it inside a "
                "coroutine");
  using S = detail::ThenState<T, U, std::decay_t<F>, Executor>;
  auto* next = new S(std::decay_t<F>(std::forward<F>(fn)), executor);
  next->add_ref();  // for the Future returned below
  Future<U> result(next);
  next->start(state_.release_ownership());
  next->release();  // construction reference
  return result;
}

template <class T>
void Promise<T>::abandon() noexcept {
  if (state_ && !state_->claimed()) state_->set_exception(detail::broken_promise());
  state_.reset();
}

/// A Future that already holds `value`.
template <class T>
Future<std::decay_t<T>> make_ready_future(T&& value) {
  auto* s = new detail::State<std::decay_t<T>>();
  s->set_value(std::forward<T>(value));
  return Future<std::decay_t<T>>(s);
}
/// A Future<void> that is already ready.
inline Future<void> make_ready_future() {
  auto* s = new detail::State<void>();
  s->set_value();
  return Future<void>(s);
}
/// A Future that already failed with `error`.
template <class T>
Future<T> make_exceptional_future(std::exception_ptr error) {
  auto* s = new detail::State<T>();
  s->set_exception(std::move(error));
  return Future<T>(s);
}

/// The result of when_any: which input settled first, and all the inputs back (the winner is
/// ready; the others may still be running).
template <class T>
struct WhenAny {
  std::size_t index = 0;
  std::vector<Future<T>> futures;
};

namespace detail {
// Counts settled inputs of when_all; the last one (or the first failure) settles the result.
template <class R>
struct JoinBase {
  explicit JoinBase(std::size_t n) : remaining(n) {}
  virtual ~JoinBase() = default;
  virtual void finish() noexcept = 0;
  // Inputs belong to the join alone, so a failure's exception moves to the result (never shared
  // between two states); finish() then sees the result claimed and reads no input.
  void on_input(StateBase& input) noexcept {
    if (input.error()) result->set_exception(input.take_error());
    if (remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      finish();
      delete this;
    }
  }
  std::atomic<std::size_t> remaining;
  Ref<State<R>> result{new State<R>()};
};

template <class R>
struct JoinInput final : Continuation {
  JoinBase<R>* join = nullptr;
  void on_ready(StateBase& s) noexcept override { join->on_input(s); }
};

template <class R>
Future<R> start_join(JoinBase<R>* join, std::vector<StateBase*> inputs,
                     std::vector<JoinInput<R>>& slots) {
  join->result->add_ref();
  Future<R> out(join->result.get());
  if (inputs.empty()) {
    join->finish();
    delete join;
    return out;
  }
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    slots[i].join = join;
    if (!inputs[i]->try_set_continuation(&slots[i])) join->on_input(*inputs[i]);
  }
  return out;
}

template <class T>
struct VectorJoin final : JoinBase<std::conditional_t<std::is_void_v<T>, void, std::vector<T>>> {
  using R = std::conditional_t<std::is_void_v<T>, void, std::vector<T>>;
  explicit VectorJoin(std::vector<Future<T>>&& in)
      : JoinBase<R>(in.size()), inputs(std::move(in)), slots(inputs.size()) {}
  void finish() noexcept override {
    if (this->result->claimed()) return;  // an input failed first
    if constexpr (std::is_void_v<T>) {
      this->result->set_value();
    } else {
      auto error = capture([this] {
        std::vector<T> values;
        values.reserve(inputs.size());
        for (auto& f : inputs) values.push_back(f.get());
        this->result->set_value(std::move(values));
      });
      if (error) this->result->set_exception(std::move(error));
    }
  }
  std::vector<Future<T>> inputs;
  std::vector<JoinInput<R>> slots;
};

template <class... T>
struct TupleJoin final : JoinBase<std::tuple<T...>> {
  explicit TupleJoin(Future<T>&&... in)
      : JoinBase<std::tuple<T...>>(sizeof...(T)), inputs(std::move(in)...), slots(sizeof...(T)) {}
  void finish() noexcept override {
    if (this->result->claimed()) return;
    auto error = capture([this] {
      this->result->set_value(
          std::apply([](auto&... f) { return std::tuple<T...>(f.get()...); }, inputs));
    });
    if (error) this->result->set_exception(std::move(error));
  }
  std::tuple<Future<T>...> inputs;
  std::vector<JoinInput<std::tuple<T...>>> slots;
};

template <class T>
struct AnyJoin {
  struct Input final : Continuation {
    AnyJoin* join = nullptr;
    std::size_t index = 0;
    void on_ready(StateBase& s) noexcept override { join->on_input(index, s); }
  };
  explicit AnyJoin(std::vector<Future<T>>&& in) : inputs(std::move(in)), slots(inputs.size()) {
    for (std::size_t i = 0; i < inputs.size(); ++i) forwards.push_back(new State<T>());
  }
  ~AnyJoin() {
    for (auto* f : forwards) f->release();
  }
  // Each input's outcome moves into a fresh state handed back to the caller, so the returned
  // futures keep their own continuation slot free for the caller's then()/co_await.
  void on_input(std::size_t i, StateBase& /*s*/) noexcept {
    Future<T>& in = inputs[i];
    if constexpr (std::is_void_v<T>) {
      if (auto error = capture([&] { in.get(); })) {
        forwards[i]->set_exception(std::move(error));
      } else {
        forwards[i]->set_value();
      }
    } else {
      if (auto error = capture([&] { forwards[i]->set_value(in.get()); })) {
        forwards[i]->set_exception(std::move(error));
      }
    }
    if (!winner_taken.exchange(true, std::memory_order_acq_rel)) {
      WhenAny<T> r;
      r.index = i;
      for (auto* f : forwards) {
        f->add_ref();
        r.futures.emplace_back(f);
      }
      result->set_value(std::move(r));
    }
    if (remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
  std::vector<Future<T>> inputs;
  std::vector<Input> slots;
  std::vector<State<T>*> forwards;
  std::atomic<bool> winner_taken{false};
  std::atomic<std::size_t> remaining{0};
  Ref<State<WhenAny<T>>> result{new State<WhenAny<T>>()};
};
}  // namespace detail

/// A Future of all the inputs' values (in order). Fails as soon as any input fails, with that
/// input's exception (like Promise.all). Consumes the inputs.
template <class T>
auto when_all(std::vector<Future<T>> futures) {
  for (auto& f : futures) {
    if (!f.valid()) detail::throw_no_state("when_all");
  }
  auto* join = new detail::VectorJoin<T>(std::move(futures));
  std::vector<detail::StateBase*> states;
  states.reserve(join->inputs.size());
  for (auto& f : join->inputs) states.push_back(f.raw_state());
  return detail::start_join(join, std::move(states), join->slots);
}

/// A Future of a tuple of the inputs' values. Fails as soon as any input fails.
template <class... T>
Future<std::tuple<T...>> when_all(Future<T>... futures) {
  static_assert(sizeof...(T) > 0, "when_all needs at least one Future");
  if ((!futures.valid() || ...)) detail::throw_no_state("when_all");
  auto* join = new detail::TupleJoin<T...>(std::move(futures)...);
  std::vector<detail::StateBase*> states;
  std::apply([&](auto&... f) { (states.push_back(f.raw_state()), ...); }, join->inputs);
  return detail::start_join(join, std::move(states), join->slots);
}

/// A Future that settles when the first input settles (value or error, like Promise.race), with
/// its index and every input handed back. Consumes the inputs. Empty input is an error.
template <class T>
Future<WhenAny<T>> when_any(std::vector<Future<T>> futures) {
  if (futures.empty()) throw std::invalid_argument("crew::when_any: needs at least one Future");
  for (auto& f : futures) {
    if (!f.valid()) detail::throw_no_state("when_any");
  }
  auto* join = new detail::AnyJoin<T>(std::move(futures));
  join->result->add_ref();
  Future<WhenAny<T>> out(join->result.get());
  const std::size_t n = join->inputs.size();
  join->remaining.store(n, std::memory_order_relaxed);
  for (std::size_t i = 0; i < n; ++i) {
    join->slots[i].join = join;
    join->slots[i].index = i;
  }
  // Read n before the loop: the last input to settle deletes the join.
  for (std::size_t i = 0; i < n; ++i) {
    detail::StateBase* s = join->inputs[i].raw_state();
    if (!s->try_set_continuation(&join->slots[i])) join->on_input(i, *s);
  }
  return out;
}

namespace detail {
// A continuation that runs on the settling thread even where others are deferred (a thread pool's
// timer, a process pool's supervisor): for crew's own glue that only posts the result to an event
// loop. User code chains with then(), which may block.
template <class T, class F>
class HandOff final : public Continuation {
 public:
  HandOff(State<T>* source, F&& fn) : source_(source), fn_(std::move(fn)) {}
  void start() noexcept {
    State<T>* s = source_.get();
    if (!s->try_set_continuation(this)) on_ready(*s);
  }
  void on_ready(StateBase& /*source*/) noexcept override {
    std::unique_ptr<HandOff> self(this);
    fn_(Future<T>(source_.release_ownership()));
  }
  [[nodiscard]] bool hands_off() const noexcept override { return true; }

 private:
  Ref<State<T>> source_;
  F fn_;
};

/// Runs `fn(Future<T>)` once `future` settles, on the settling thread (or here if it already
/// has). `fn` must not block and must not throw: it hands the result to another thread.
template <class T, class F>
void hand_off(Future<T>&& future, F&& fn) {
  static_assert(std::is_nothrow_invocable_v<std::decay_t<F>&, Future<T>>,
                "hand_off(fn): fn must be noexcept; it only posts the result elsewhere");
  if (!future.valid()) throw_no_state("hand_off");
  auto* h = new HandOff<T, std::decay_t<F>>(future.release_state(), std::forward<F>(fn));
  h->start();
}
}  // namespace detail

}  // namespace v0
}  // namespace crew
